//! Redis URLs: as they may be shown (every form the `redis` crate takes,
//! with its secrets hidden), and the Sentinel form, which the crate does not
//! parse: `redis+sentinel://[[USER][:PASSWORD]@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]`,
//! with `rediss+sentinel://` for TLS to the data nodes (`#insecure` skips
//! the certificate check) and `?sentinel_username=…&sentinel_password=…`
//! for Sentinels that want credentials of their own. The user, password and
//! database are the data nodes'; a Sentinel's port defaults to 26379.

use percent_encoding::percent_decode_str;
use redis::TlsMode;

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
    let name = name.to_ascii_lowercase();
    name == "pass" || name.ends_with("password")
}

/// A `redis+sentinel://` URL, parsed.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SentinelUrl {
    /// The Sentinels: host and port.
    pub(super) sentinels: Vec<(String, u16)>,
    /// The name they monitor the primary by.
    pub(super) master: String,
    pub(super) db: i64,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    /// TLS to the data nodes, if asked for.
    pub(super) tls: Option<TlsMode>,
    pub(super) sentinel_username: Option<String>,
    pub(super) sentinel_password: Option<String>,
}

/// Whether `url` names Sentinels rather than one Redis.
pub(super) fn is_sentinel(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

fn decoded(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{text:?} is not UTF-8"))
}

impl SentinelUrl {
    /// Parses `url`; the error says what is wrong, in a few words.
    pub(super) fn parse(url: &str) -> Result<SentinelUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Err("not a redis+sentinel:// or rediss+sentinel:// URL".into());
        };
        let (rest, fragment) = rest.split_once('#').map_or((rest, None), |(a, f)| (a, Some(f)));
        let (rest, query) = rest.split_once('?').map_or((rest, None), |(a, q)| (a, Some(q)));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user_info, hosts) =
            authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
        let (mut username, mut password) = (None, None);
        if let Some(info) = user_info {
            let (user, pass) = info.split_once(':').map_or((info, None), |(u, p)| (u, Some(p)));
            username = (!user.is_empty()).then(|| decoded(user)).transpose()?;
            password = pass.map(decoded).transpose()?;
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = if let Some(v6) = host.strip_prefix('[') {
                let (name, after) =
                    v6.split_once(']').ok_or_else(|| format!("unclosed [ in {host:?}"))?;
                (name, after.strip_prefix(':'))
            } else {
                host.rsplit_once(':').map_or((host, None), |(name, port)| (name, Some(port)))
            };
            let port = match port {
                Some(port) => port.parse().map_err(|_| format!("bad port in {host:?}"))?,
                None => 26379,
            };
            if name.is_empty() {
                return Err(format!("a Sentinel without a host in {hosts:?}"));
            }
            sentinels.push((name.to_owned(), port));
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = decoded(segments.next().ok_or("no /MASTER name after the Sentinels")?)?;
        let db = match segments.next() {
            Some(db) => db.parse().map_err(|_| format!("bad database {db:?}"))?,
            None => 0,
        };
        if segments.next().is_some() {
            return Err("more than /MASTER/DB in the path".into());
        }
        let (mut sentinel_username, mut sentinel_password) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sentinel_username" => sentinel_username = Some(decoded(value)?),
                "sentinel_password" => sentinel_password = Some(decoded(value)?),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        let tls = match (tls, fragment) {
            (false, None) => None,
            (true, None) => Some(TlsMode::Secure),
            (true, Some("insecure")) => Some(TlsMode::Insecure),
            (_, Some(other)) => return Err(format!("unknown #{other}")),
        };
        Ok(SentinelUrl {
            sentinels,
            master,
            db,
            username,
            password,
            tls,
            sentinel_username,
            sentinel_password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_their_sentinels_master_and_credentials() {
        let url = "rediss+sentinel://app:p%40ss@10.0.0.1,10.0.0.2:26380,[::1]:26381/main/2?sentinel_password=sp#insecure";
        let parsed = SentinelUrl::parse(url).unwrap();
        let hosts = [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381)];
        assert_eq!(parsed.sentinels, hosts.map(|(h, p)| (h.to_owned(), p)));
        assert_eq!((parsed.master.as_str(), parsed.db), ("main", 2));
        assert_eq!(
            (parsed.username.as_deref(), parsed.password.as_deref()),
            (Some("app"), Some("p@ss"))
        );
        assert_eq!(parsed.sentinel_password.as_deref(), Some("sp"));
        assert_eq!(parsed.tls, Some(TlsMode::Insecure));
        assert!(!redacted(url).contains("p%40ss") && !redacted(url).contains("=sp"));
        let plain = SentinelUrl::parse("redis+sentinel://s1/m").unwrap();
        assert_eq!((plain.sentinels, plain.tls), (vec![("s1".to_owned(), 26379)], None));
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:x/m",
            "redis+sentinel:///m",
            "redis://s1/m",
            "redis+sentinel://s1/m/0/x",
            "redis+sentinel://s1/m?db=2",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad}");
        }
    }

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
