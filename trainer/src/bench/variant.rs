//! A method as the bench runs it: a name with optional parameters, as in
//! `scbd:alpha=64:temperature=0.2`, so one bench can sweep a parameter.

use std::fmt;
use std::str::FromStr;

/// A method and the parameters the bench sets on top of the config's.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodVariant {
    /// Method name.
    pub method: String,
    /// Parameters in the order given.
    pub params: Vec<(String, toml::Value)>,
}

impl FromStr for MethodVariant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut parts = text.split(':');
        let method = parts.next().unwrap_or_default().trim().to_owned();
        if method.is_empty() {
            return Err(format!(
                "{text:?}: no method name (use NAME or NAME:key=value)"
            ));
        }
        let mut params = Vec::new();
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{text:?}: {part:?} is not key=value"))?;
            let key = key.trim();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{text:?}: {key:?} is not a parameter name"));
            }
            // A TOML value (number, boolean, quoted string), else a bare string.
            let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.trim().to_owned()));
            params.push((key.to_owned(), value));
        }
        Ok(MethodVariant { method, params })
    }
}

impl fmt::Display for MethodVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.method)?;
        for (k, v) in &self.params {
            write!(f, ":{k}={}", bare(v))?;
        }
        Ok(())
    }
}

/// A value as typed: strings without quotes.
fn bare(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl MethodVariant {
    /// Folder name of its runs: `scbd-alpha64`.
    pub fn dir_name(&self) -> String {
        let mut name = self.method.clone();
        for (k, v) in &self.params {
            let value: String = bare(v)
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            name.push_str(&format!("-{k}{value}"));
        }
        name
    }

    /// Row title: `SCBD (alpha 64)`.
    pub fn title(&self) -> String {
        let name = match self.method.as_str() {
            "erm" => "ERM",
            "abra" => "ABRA",
            "dann" => "DANN",
            "mixstyle" => "MixStyle",
            "scbd" => "SCBD",
            "ist" => "IST",
            other => other,
        };
        if self.params.is_empty() {
            return name.to_owned();
        }
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k} {}", bare(v)))
            .collect();
        format!("{name} ({})", params.join(", "))
    }

    /// The method's parameter table: `base` (the config's, when it is for
    /// this method) with the variant's on top.
    pub fn table(&self, base_method: &str, base: &toml::Table) -> toml::Table {
        let mut table = if base_method == self.method {
            base.clone()
        } else {
            toml::Table::new()
        };
        for (k, v) in &self.params {
            table.insert(k.clone(), v.clone());
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_name_and_typed_parameters() {
        let v: MethodVariant = "scbd:alpha=64:env_labels=class_env:temperature=0.2"
            .parse()
            .unwrap();
        assert_eq!(v.method, "scbd");
        assert_eq!(v.params[0], ("alpha".into(), toml::Value::Integer(64)));
        assert_eq!(
            v.params[1],
            ("env_labels".into(), toml::Value::String("class_env".into()))
        );
        assert_eq!(v.params[2], ("temperature".into(), toml::Value::Float(0.2)));
        assert_eq!(
            v.dir_name(),
            "scbd-alpha64-env_labelsclass_env-temperature0.2"
        );
        assert_eq!(
            v.title(),
            "SCBD (alpha 64, env_labels class_env, temperature 0.2)"
        );
        assert_eq!(v.to_string().parse::<MethodVariant>().unwrap(), v);
        let erm: MethodVariant = "erm".parse().unwrap();
        assert_eq!((erm.dir_name(), erm.title()), ("erm".into(), "ERM".into()));
        assert!("scbd:alpha".parse::<MethodVariant>().is_err());
        assert!(":alpha=1".parse::<MethodVariant>().is_err());
        assert!("scbd:a b=1".parse::<MethodVariant>().is_err());
    }

    #[test]
    fn only_the_config_s_own_method_keeps_its_parameters() {
        let mut base = toml::Table::new();
        base.insert("alpha".into(), toml::Value::Integer(8));
        base.insert("temperature".into(), toml::Value::Float(0.5));
        let v: MethodVariant = "scbd:alpha=0".parse().unwrap();
        let t = v.table("scbd", &base);
        assert_eq!(t["alpha"], toml::Value::Integer(0));
        assert_eq!(t["temperature"], toml::Value::Float(0.5));
        assert!(v.table("abra", &base).get("temperature").is_none());
    }
}
