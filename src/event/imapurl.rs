//! RFC 5092 IMAP URLs as Cyrus writes them in an event's `uri`, and the mailbox owner they name.
//!
//! A generic URL library is no help here: the path is an opaque, percent-encoded mailbox name
//! with `;UIDVALIDITY=` and `/;UID=` parameters (`protocol/rfc5423-events.md` §2). This module
//! only reads strings; it never guesses an owner from anything but the path.

use percent_encoding::percent_decode_str;

use super::strip_prefix_ignore_case;

/// The mailbox an event is about, read from its IMAP URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRef {
    /// The URL as sent, for clients that open it (a push's `url`).
    pub url: String,
    /// The authority: Cyrus's `servername`.
    pub server: String,
    /// The whole mailbox name in Cyrus's admin namespace, percent-decoded (`user/alice/Work`).
    pub name: String,
    /// The user who owns the mailbox (`alice`, `bob@example.com`); None for shared mailboxes.
    pub owner: Option<String>,
    /// The folder within the owner's tree: `INBOX` for the root, else the rest of the path
    /// (`Work`, `#calendars/Default`); None for shared mailboxes.
    pub folder: Option<String>,
    pub uidvalidity: Option<u32>,
    /// The first UID of the message(s) the event is about, when the URL names one.
    pub uid: Option<u32>,
}

/// Why a `uri` could not be read; the text goes into logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("uri is not an imap:// URL")]
    NotImap,
    #[error("uri has an empty host")]
    EmptyHost,
}

/// Parses an IMAP URL; `Ok(None)` when it names only a server (Login, Logout).
pub fn parse(uri: &str) -> Result<Option<MailboxRef>, UrlError> {
    let rest = strip_prefix_ignore_case(uri, "imap://").ok_or(UrlError::NotImap)?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    // Userinfo (`user;AUTH=*@`) is not the owner; Cyrus never sends it anyway.
    let server = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if server.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    let path = path.split_once('?').map_or(path, |(path, _search)| path);
    if path.is_empty() {
        return Ok(None);
    }
    let (mailbox_part, uid) = match find_ignore_case(path, "/;UID=") {
        Some(at) => (&path[..at], leading_number(&path[at + "/;UID=".len()..])),
        None => (path, None),
    };
    let (encoded_name, uidvalidity) = match find_ignore_case(mailbox_part, ";UIDVALIDITY=") {
        Some(at) => (
            &mailbox_part[..at],
            leading_number(&mailbox_part[at + ";UIDVALIDITY=".len()..]),
        ),
        None => (mailbox_part, None),
    };
    let name = percent_decode_str(encoded_name)
        .decode_utf8_lossy()
        .into_owned();
    let (owner, folder) = match owner_and_folder(&name) {
        Some((owner, folder)) => (Some(owner), Some(folder)),
        None => (None, None),
    };
    Ok(Some(MailboxRef {
        url: uri.to_owned(),
        server: server.to_owned(),
        name,
        owner,
        folder,
        uidvalidity,
        uid,
    }))
}

/// Splits an admin-namespace name `user<sep><local>[<sep>folder…][@domain]` into the owner and
/// the folder. With `.` as separator a `^` in the local part stands for a dot.
fn owner_and_folder(name: &str) -> Option<(String, String)> {
    let (path, domain) = match name.rsplit_once('@') {
        Some((path, domain)) if !domain.is_empty() => (path, Some(domain)),
        _ => (name, None),
    };
    let after_user = path.strip_prefix("user")?;
    let separator = after_user
        .chars()
        .next()
        .filter(|c| *c == '/' || *c == '.')?;
    let tree = &after_user[1..];
    let (local, folder) = tree.split_once(separator).unwrap_or((tree, ""));
    if local.is_empty() {
        return None;
    }
    let mut owner = if separator == '.' {
        local.replace('^', ".")
    } else {
        local.to_owned()
    };
    if let Some(domain) = domain {
        owner.push('@');
        owner.push_str(domain);
    }
    let folder = if folder.is_empty() { "INBOX" } else { folder };
    Some((owner, folder.to_owned()))
}

fn leading_number(text: &str) -> Option<u32> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..digits].parse().ok()
}

/// Where `needle` starts in `haystack`, ASCII case ignored. The needles here start with
/// punctuation, which has no case, so candidates are found with `memchr`.
fn find_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    debug_assert!(!needle[0].is_ascii_alphabetic());
    memchr::memchr_iter(needle[0], haystack).find(|&at| {
        haystack
            .get(at..at + needle.len())
            .is_some_and(|window| window.eq_ignore_ascii_case(needle))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// name, owner, folder, uidvalidity, uid
    type Expected<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<u32>,
        Option<u32>,
    );

    fn check(uri: &str, expect: Option<Expected<'_>>) {
        let parsed = parse(uri).unwrap_or_else(|err| panic!("{uri}: {err}"));
        let got = parsed.as_ref().map(|m| {
            (
                m.name.as_str(),
                m.owner.as_deref(),
                m.folder.as_deref(),
                m.uidvalidity,
                m.uid,
            )
        });
        assert_eq!(got, expect, "{uri}");
    }

    #[test]
    fn cyrus_urls() {
        check(
            "imap://mailstore1.example.test/user/alice;UIDVALIDITY=1795878360/;UID=1",
            Some((
                "user/alice",
                Some("alice"),
                Some("INBOX"),
                Some(1795878360),
                Some(1),
            )),
        );
        check(
            "imap://mailstore1.example.test/user/alice/Work;UIDVALIDITY=1795878363",
            Some((
                "user/alice/Work",
                Some("alice"),
                Some("Work"),
                Some(1795878363),
                None,
            )),
        );
        check(
            "imap://h/user/alice/%23calendars/Default;UIDVALIDITY=9/;UID=1",
            Some((
                "user/alice/#calendars/Default",
                Some("alice"),
                Some("#calendars/Default"),
                Some(9),
                Some(1),
            )),
        );
        check(
            "imap://mail.example.org/user.alice;UIDVALIDITY=1342187337/;UID=1024",
            Some((
                "user.alice",
                Some("alice"),
                Some("INBOX"),
                Some(1342187337),
                Some(1024),
            )),
        );
        check(
            "imap://h/user.john^doe.Sent;uidvalidity=5",
            Some((
                "user.john^doe.Sent",
                Some("john.doe"),
                Some("Sent"),
                Some(5),
                None,
            )),
        );
        check(
            "imap://mail.example.org/user/bob%40example.com;UIDVALIDITY=5/;UID=7",
            Some((
                "user/bob@example.com",
                Some("bob@example.com"),
                Some("INBOX"),
                Some(5),
                Some(7),
            )),
        );
        check(
            "imap://h/user/bob/Sent@example.com;UIDVALIDITY=5",
            Some((
                "user/bob/Sent@example.com",
                Some("bob@example.com"),
                Some("Sent"),
                Some(5),
                None,
            )),
        );
        check(
            "imap://h/user/alice/Entw%C3%BCrfe;UIDVALIDITY=9",
            Some((
                "user/alice/Entwürfe",
                Some("alice"),
                Some("Entwürfe"),
                Some(9),
                None,
            )),
        );
        check(
            "imap://mail.example.org/shared.folder;UIDVALIDITY=3",
            Some(("shared.folder", None, None, Some(3), None)),
        );
        check(
            "imap://mailstore1.example.test/user/alice",
            Some(("user/alice", Some("alice"), Some("INBOX"), None, None)),
        );
        // The sieve-script mailbox: `user` alone names nobody.
        check(
            "imap://h/user;UIDVALIDITY=1795878367",
            Some(("user", None, None, Some(1795878367), None)),
        );
        check(
            "imap://h/username/x",
            Some(("username/x", None, None, None, None)),
        );
        check("imap://mailstore1.example.test", None);
        check("IMAP://h/", None);
        check(
            "imap://someone;AUTH=*@h/user/carol;UIDVALIDITY=1/;UID=2/;SECTION=1",
            Some(("user/carol", Some("carol"), Some("INBOX"), Some(1), Some(2))),
        );
        check(
            "imap://h/user/alice;UIDVALIDITY=x",
            Some(("user/alice", Some("alice"), Some("INBOX"), None, None)),
        );
    }

    #[test]
    fn not_imap_urls() {
        assert_eq!(parse("http://h/user/alice"), Err(UrlError::NotImap));
        assert_eq!(parse(""), Err(UrlError::NotImap));
        assert_eq!(parse("imap:///user/alice"), Err(UrlError::EmptyHost));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(&text);
            let _ = parse(&format!("imap://h/{text}"));
        }
    }
}
