//! A message's transaction up to the message itself: MAIL FROM, a RCPT TO per recipient, DATA.
//!
//! One after the other, that is a round trip each. A relay that offers PIPELINING (RFC 2920)
//! takes the whole group as one write and answers it in order: one round trip for any number
//! of recipients, and one write and one read instead of three of each. lettre's `ServerInfo`
//! keeps only the extensions it uses itself, so [`offers_pipelining`] reads the EHLO reply
//! of a connection's own.
//!
//! A refusal inside a pipelined group may leave the relay waiting for the message (a
//! recipient refused, DATA accepted): a QUIT then would be read as message text, so such a
//! connection is closed without one ([`Refused::quit`]). The message is never committed: its
//! final `.` is not sent.

use lettre::address::Envelope;
use lettre::transport::smtp::Error;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

/// Why a transaction did not reach the message.
#[derive(Debug)]
pub(super) struct Refused {
    pub(super) error: Error,
    /// Whether the session is at a command boundary, where QUIT is understood.
    pub(super) quit: bool,
}

/// Asks the relay for its extensions again and says whether PIPELINING is one: the EHLO reply
/// lettre read at the greeting is not kept whole. Sent before AUTH, which an EHLO resets on
/// some relays.
pub(super) async fn offers_pipelining(
    connection: &mut AsyncSmtpConnection,
    hello: &ClientId,
) -> Result<bool, Error> {
    let reply = connection.command(Ehlo::new(hello.clone())).await?;
    Ok(reply.message().skip(1).any(|line| {
        line.split_ascii_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    }))
}

/// Sends MAIL FROM, RCPT TO and DATA for `envelope`, as one group when `pipelining`; Ok once
/// the relay waits for the message.
pub(super) async fn start(
    connection: &mut AsyncSmtpConnection,
    pipelining: bool,
    envelope: &Envelope,
    message: &[u8],
) -> Result<(), Refused> {
    let mail = Mail::new(
        envelope.from().cloned(),
        parameters(connection, envelope, message),
    );
    let recipients = envelope.to();
    if !pipelining {
        let polite = |error| Refused { error, quit: true };
        connection.command(mail).await.map_err(polite)?;
        for recipient in recipients {
            connection
                .command(Rcpt::new(recipient.clone(), Vec::new()))
                .await
                .map_err(polite)?;
        }
        connection.command(Data).await.map_err(polite)?;
        return Ok(());
    }
    let mut group = mail.to_string();
    for recipient in recipients {
        group.push_str(&Rcpt::new(recipient.clone(), Vec::new()).to_string());
    }
    group.push_str(&Data.to_string());
    // The first reply, MAIL's, comes with the write; then one per recipient, then DATA's.
    // The first refusal ends it: the connection is closed without reading the rest.
    let silent = |error| Refused { error, quit: false };
    connection.command(group).await.map_err(silent)?;
    for _ in recipients {
        connection.read_response().await.map_err(silent)?;
    }
    connection.read_response().await.map_err(silent)?;
    Ok(())
}

/// MAIL FROM's parameters: SMTPUTF8 for addresses that need it, 8BITMIME for a body that does,
/// each when the relay offers it.
fn parameters(
    connection: &AsyncSmtpConnection,
    envelope: &Envelope,
    message: &[u8],
) -> Vec<MailParameter> {
    let info = connection.server_info();
    let mut parameters = Vec::new();
    let ascii = |address: &lettre::Address| AsRef::<str>::as_ref(address).is_ascii();
    let non_ascii_addresses =
        envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a));
    if non_ascii_addresses && info.supports_feature(Extension::SmtpUtfEight) {
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() && info.supports_feature(Extension::EightBitMime) {
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    parameters
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lettre::address::Envelope;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
    use tokio::net::TcpListener;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::super::{Commit, SmtpRelay};
    use crate::notify::SendError;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// One connection of a relay that offers PIPELINING, driven line by line by the test.
    struct Relay {
        lines: Lines<BufReader<OwnedReadHalf>>,
        writer: OwnedWriteHalf,
    }

    impl Relay {
        /// Accepts a connection, greets it and answers lettre's EHLO and ours.
        async fn accept(listener: &TcpListener) -> Relay {
            let (socket, _) = listener.accept().await.expect("accept");
            let (reader, writer) = socket.into_split();
            let mut relay = Relay {
                lines: BufReader::new(reader).lines(),
                writer,
            };
            relay.reply("220 relay.test ESMTP\r\n").await;
            for _ in 0..2 {
                let ehlo = relay.line().await.expect("EHLO");
                assert!(ehlo.starts_with("EHLO "), "{ehlo}");
                relay
                    .reply("250-relay.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                    .await;
            }
            relay
        }

        /// The next line the client sent, None at its end of the connection. A client that
        /// waits for a reply the relay holds back never sends it: that fails the test.
        async fn line(&mut self) -> Option<String> {
            tokio::time::timeout(DEADLINE, self.lines.next_line())
                .await
                .expect("the client sent the line without waiting for a reply")
                .expect("read")
        }

        async fn reply(&mut self, text: &str) {
            self.writer.write_all(text.as_bytes()).await.expect("reply");
        }

        /// The group of a transaction with `recipients`, read before any of it is answered.
        async fn group(&mut self, recipients: usize) -> Vec<String> {
            let mut group = Vec::new();
            for _ in 0..recipients + 2 {
                group.push(self.line().await.expect("a command of the group"));
            }
            group
        }
    }

    fn envelope() -> Envelope {
        Envelope::new(
            Some("alarms@mailpush.test".parse().unwrap()),
            vec![
                "alice@example.test".parse().unwrap(),
                "bob@example.test".parse().unwrap(),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_relay_that_offers_pipelining_gets_each_transaction_as_one_group() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let relay = tokio::spawn(async move {
            let mut relay = Relay::accept(&listener).await;
            let mut messages = Vec::new();
            for _ in 0..2 {
                assert_eq!(
                    relay.group(2).await,
                    [
                        "MAIL FROM:<alarms@mailpush.test>",
                        "RCPT TO:<alice@example.test>",
                        "RCPT TO:<bob@example.test>",
                        "DATA"
                    ]
                );
                relay
                    .reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 Go ahead\r\n")
                    .await;
                let mut message = Vec::new();
                loop {
                    let line = relay.line().await.expect("the message");
                    if line == "." {
                        break;
                    }
                    message.push(line);
                }
                relay.reply("250 2.0.0 Queued\r\n").await;
                messages.push(message);
            }
            messages
        });
        let client = SmtpRelay::new(&url, None, 1, DEADLINE).unwrap();
        for n in 0..2 {
            let message = format!("Subject: alarm {n}\r\n\r\nIt is time.");
            client
                .send(&envelope(), message.as_bytes(), Commit::done())
                .await
                .expect("sent");
        }
        let messages = relay
            .await
            .expect("the relay saw two pipelined transactions");
        assert_eq!(
            messages,
            [0, 1].map(|n| vec![
                format!("Subject: alarm {n}"),
                String::new(),
                "It is time.".into()
            ]),
            "both on one connection, each message whole"
        );
    }

    #[tokio::test]
    async fn a_recipient_refused_in_a_group_ends_the_connection_before_the_message() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let relay = tokio::spawn(async move {
            let mut relay = Relay::accept(&listener).await;
            relay.group(2).await;
            // A lenient relay takes DATA after refusing one recipient: it now reads the
            // message, so whatever comes next would be part of it.
            relay
                .reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <bob@example.test>: no such user\r\n354 Go ahead\r\n")
                .await;
            relay.line().await
        });
        let client = SmtpRelay::new(&url, None, 1, DEADLINE).unwrap();
        let sent = tokio::time::timeout(
            DEADLINE,
            client.send(&envelope(), b"Subject: x\r\n\r\nx\r\n", Commit::done()),
        )
        .await
        .expect("the refusal ends the send at once");
        match sent {
            Err(SendError::Permanent(reason)) => {
                assert!(reason.contains("no such user"), "{reason}")
            }
            other => panic!("a 550 is permanent: {other:?}"),
        }
        assert_eq!(
            relay.await.unwrap(),
            None,
            "closed with nothing more: no QUIT read as message text, no message, no `.`"
        );
    }
}
