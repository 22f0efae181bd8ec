//! Hiding secrets in what is logged or shown.

/// A URL with its password replaced by `***` (`redis://:pw@host:6379` ->
/// `redis://:***@host:6379`); the user name, host, path and query stay.
/// Text that is not a URL with credentials comes back as it was.
///
/// ```
/// use rtunnel_core::redact::url;
/// assert_eq!(url("redis://:s3cret@10.0.0.5:6379/0"), "redis://:***@10.0.0.5:6379/0");
/// assert_eq!(url("postgres://rtunnel:pw@db/rtunnel"), "postgres://rtunnel:***@db/rtunnel");
/// assert_eq!(url("http://proxy:3128"), "http://proxy:3128");
/// assert_eq!(url("sqlite:///var/lib/rtunnel/rtunnel.db"), "sqlite:///var/lib/rtunnel/rtunnel.db");
/// ```
pub fn url(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_owned();
    };
    let rest = &text[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return text.to_owned();
    };
    let userinfo = &rest[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => user,
        // A user with no password: a token in the user part (`redis://TOKEN@`).
        None if !userinfo.is_empty() => "***",
        None => "",
    };
    let shown = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        user.to_owned()
    };
    format!("{}{shown}{}", &text[..start], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn only_the_secret_goes() {
        assert_eq!(url("redis://user:pw@h:1?x=@y"), "redis://user:***@h:1?x=@y");
        assert_eq!(url("redis://tok@h"), "redis://***@h");
        assert_eq!(url("rediss://h:6380"), "rediss://h:6380");
        assert_eq!(url("not a url"), "not a url");
        assert_eq!(url("http://a:b@c@host/p"), "http://a:***@host/p");
    }
}
