//! Query strings: the parameters an endpoint takes, parsed once for all of
//! them, every refusal a 400 naming the parameter.

use std::borrow::Cow;

use crate::edge::error::ApiError;

/// Longest parameter name quoted back in an error.
const NAME_QUOTED_MAX: usize = 64;

/// The query string as `name → value`, each name one of `known` and given at
/// most once (percent- and `+`-decoded).
pub(super) fn params<'q>(
    query: Option<&'q str>,
    known: &'static [&'static str],
) -> Result<Vec<(&'static str, Cow<'q, str>)>, ApiError> {
    let mut out: Vec<(&'static str, Cow<'q, str>)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let Some(known_name) = known.iter().copied().find(|k| *k == name) else {
            let mut quoted: String = name.chars().take(NAME_QUOTED_MAX).collect();
            if quoted.is_empty() {
                quoted = "(empty name)".into();
            }
            return Err(ApiError::InvalidRequest(format!(
                "{quoted}: is not a parameter of this request (its parameters are {})",
                known.join(", ")
            )));
        };
        if out.iter().any(|(n, _)| *n == known_name) {
            return Err(ApiError::InvalidRequest(format!(
                "{known_name}: appears more than once"
            )));
        }
        out.push((known_name, value));
    }
    Ok(out)
}
