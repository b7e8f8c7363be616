//! `-a KEY=VALUE` attributes, as `publish` and `route` take them.

use anyhow::bail;

use crate::wire::Attribute;

/// Parse `KEY=VALUE`, `KEY:Number=5`, `KEY:Binary=BASE64`.
pub fn parse_attribute(text: &str) -> anyhow::Result<(String, Attribute)> {
    let Some((left, value)) = text.split_once('=') else {
        bail!("attribute `{text}` is not KEY=VALUE (types: KEY:Number=5, KEY:Binary=BASE64)");
    };
    let (name, data_type) = match left.split_once(':') {
        Some((name, ty)) => (name, ty),
        None => (left, "String"),
    };
    if name.is_empty() {
        bail!("attribute `{text}` has an empty name");
    }
    let base = data_type.split('.').next().unwrap_or(data_type);
    match base {
        "String" => {}
        "Number" => {
            if value.parse::<f64>().is_err() {
                bail!("attribute `{name}`: `{value}` is not a number");
            }
        }
        "Binary" => {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD
                .decode(value)
                .is_err()
            {
                bail!("attribute `{name}`: Binary values are base64; `{value}` is not");
            }
        }
        other => bail!("attribute `{name}`: type `{other}` is not String, Number or Binary"),
    }
    Ok((
        name.to_string(),
        Attribute {
            data_type: data_type.to_string(),
            value: value.to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_with_types() {
        assert_eq!(
            parse_attribute("k=v").expect("ok").1,
            Attribute::string("v")
        );
        assert_eq!(
            parse_attribute("n:Number=5").expect("ok").1,
            Attribute::number(5)
        );
        assert!(parse_attribute("n:Number=x").is_err());
        assert!(parse_attribute("novalue").is_err());
        assert!(parse_attribute("b:Binary=!!").is_err());
        assert!(parse_attribute("=v").is_err());
        assert_eq!(parse_attribute("u=a=b").expect("ok").1.value, "a=b");
    }
}
