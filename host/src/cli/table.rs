//! Aligned tables for people (comfy-table): a header row and columns two spaces apart, no
//! borders, no wrapping, so `grep` and `cut` still work on the lines.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

/// `rows` under `header`, each column as wide as its widest cell; lines end without padding.
pub fn render<R, C>(header: &[&str], rows: R) -> String
where
    R: IntoIterator<Item = Vec<C>>,
    C: ToString,
{
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row.iter().map(ToString::to_string));
    }
    for column in table.column_iter_mut() {
        column.set_cell_alignment(CellAlignment::Left);
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_without_borders_or_trailing_spaces() {
        let text = super::render(
            &["key", "from"],
            [vec!["a", "default"], vec!["longer.key", "x"]],
        );
        assert_eq!(text, "KEY         FROM\na           default\nlonger.key  x");
    }
}
