//! Hiding secrets in what is logged or shown.

/// Query parameters that carry a secret in the URLs rtunnel is given
/// (PostgreSQL's `password` and `sslpassword`, Redis's `pass`, tokens).
const SECRET_PARAMS: [&str; 6] = ["password", "pass", "sslpassword", "token", "secret", "auth"];

/// A URL with its secrets replaced by `***`: the password of its user
/// part and the values of secret query parameters (`password`, `pass`,
/// `sslpassword`, `token`, `secret`, `auth`). The scheme, user name, host,
/// path and other parameters stay. Text that looks like a URL but does not
/// parse (a password with a raw `#` or `/` in it) shows as its scheme and
/// `<unparseable URL>`, never as given; text that is not a URL (a file
/// path) comes back as it was.
///
/// ```
/// use rtunnel_core::redact::url;
/// assert_eq!(url("redis://:s3cret@10.0.0.5:6379/0"), "redis://:***@10.0.0.5:6379/0");
/// assert_eq!(url("postgres://rtunnel:pw@db/rtunnel"), "postgres://rtunnel:***@db/rtunnel");
/// assert_eq!(url("postgres://db/rt?password=x&sslmode=require"), "postgres://db/rt?password=***&sslmode=require");
/// assert_eq!(url("postgres://u:p#w@h/db"), "postgres://<unparseable URL>");
/// assert_eq!(url("http://proxy:3128"), "http://proxy:3128");
/// assert_eq!(url("/var/lib/rtunnel/rtunnel.db"), "/var/lib/rtunnel/rtunnel.db");
/// ```
pub fn url(text: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(text) else {
        return match text.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<unparseable URL>"),
            None => text.to_owned(),
        };
    };
    let mut changed = false;
    if parsed.password().is_some() {
        // Fails only for URLs that cannot have one, which this has.
        let _ = parsed.set_password(Some("***"));
        changed = true;
    }
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs
        .iter()
        .any(|(k, _)| SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()))
    {
        let hidden = pairs.into_iter().map(|(k, v)| {
            if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) {
                (k, "***".to_owned())
            } else {
                (k, v)
            }
        });
        parsed.query_pairs_mut().clear().extend_pairs(hidden);
        changed = true;
    }
    if changed {
        // `***` in a query is written as is; `*` needs no escaping.
        parsed.to_string().replace("%2A%2A%2A", "***")
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn only_the_secrets_go() {
        assert_eq!(url("redis://user:pw@h:1?x=y"), "redis://user:***@h:1?x=y");
        assert_eq!(url("redis://user@h"), "redis://user@h");
        assert_eq!(url("rediss://h:6380"), "rediss://h:6380");
        assert_eq!(
            url("redis+unix:///s.sock?pass=x"),
            "redis+unix:///s.sock?pass=***"
        );
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("http://a:b@c@host/p"), "http://a:***@host/p");
        assert_eq!(url("postgres://u:p/w@h/db"), "postgres://<unparseable URL>");
        assert_eq!(
            url("postgres://db/rt?sslpassword=k&PASSWORD=x"),
            "postgres://db/rt?sslpassword=***&PASSWORD=***"
        );
        assert_eq!(
            url("sqlite:///var/lib/r.db?mode=rwc"),
            "sqlite:///var/lib/r.db?mode=rwc"
        );
        assert_eq!(
            url("https://a:b@support.example.com/"),
            "https://a:***@support.example.com/"
        );
    }
}
