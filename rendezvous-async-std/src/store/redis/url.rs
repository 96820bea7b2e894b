//! Redis URLs as they may be shown: every form the `redis` crate takes,
//! with its secrets hidden.

/// `url` as it may be logged or put in an answer: the password of the
/// user-info part (`redis://user:secret@host`, `rediss://`, the
/// `+sentinel` forms) and any `pass`/`password` query parameter
/// (`redis+unix:///path?pass=secret`, `unix://…`) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let mut shown = format!("{scheme}://{authority}{path}");
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&params.join("&"));
    }
    shown
}

fn is_secret(name: &str) -> bool {
    matches!(name.to_ascii_lowercase().as_str(), "pass" | "password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_url_is_shown_without_its_password() {
        for (url, shown) in [
            ("redis://:s3cret@db:6379/2", "redis://:***@db:6379/2"),
            ("rediss://app:s3cret@db/0", "rediss://app:***@db/0"),
            ("redis://s3cret@db", "redis://***@db"),
            ("redis://db:6379", "redis://db:6379"),
            (
                "redis+unix:///run/redis.sock?db=2&pass=s3cret",
                "redis+unix:///run/redis.sock?db=2&pass=***",
            ),
            (
                "unix:///run/redis.sock?user=app&password=s3cret",
                "unix:///run/redis.sock?user=app&password=***",
            ),
            ("redis://db/0?protocol=resp3", "redis://db/0?protocol=resp3"),
            (
                "redis+sentinel://:s3cret@s1:26379,s2:26379/mymaster",
                "redis+sentinel://:***@s1:26379,s2:26379/mymaster",
            ),
            ("redis://a:b@c@db", "redis://a:***@db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
            assert!(!redacted(url).contains("s3cret"));
        }
    }
}
