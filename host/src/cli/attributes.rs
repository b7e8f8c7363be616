//! A message's BODY argument and `-a KEY=VALUE` attributes, as `publish` and `route` take them.

use std::io::Read;

use anyhow::{bail, Context as _};

use crate::wire::{Attribute, Attributes};

/// The BODY argument: `{}` when absent, standard input for `-`, else the text itself.
pub fn read_body(arg: Option<&str>) -> anyhow::Result<Vec<u8>> {
    Ok(match arg {
        None => b"{}".to_vec(),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the body from standard input")?;
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
    })
}

/// Every `-a` argument parsed ([`parse_attribute`]); the first bad one is the error.
pub fn parse_attributes(texts: &[String]) -> anyhow::Result<Attributes> {
    texts.iter().map(|text| parse_attribute(text)).collect()
}

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
