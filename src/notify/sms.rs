//! Text messages: squeezing a notification into one SMS, and the two transports (an HTTP
//! provider, or a local log file when none is configured).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::SendError;
use super::render::Templates;
use crate::config::SmsConfig;

/// GSM 03.38 default alphabet: one septet each.
const GSM7: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table: two septets each (escape + character).
const GSM7_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// Cuts `text` to fit one SMS: 160 GSM-7 septets, or 70 UCS-2 units when it needs characters
/// outside GSM-7. A cut text ends in an ellipsis ("..." in GSM-7, "…" in UCS-2).
pub fn squeeze(text: &str) -> String {
    let text = text.trim();
    let gsm = text
        .chars()
        .all(|c| GSM7.contains(c) || GSM7_EXTENDED.contains(c));
    let (limit, ellipsis, cost): (usize, &str, fn(char) -> usize) = if gsm {
        (
            160,
            "...",
            |c| if GSM7_EXTENDED.contains(c) { 2 } else { 1 },
        )
    } else {
        (70, "…", char::len_utf16)
    };
    if text.chars().map(cost).sum::<usize>() <= limit {
        return text.to_owned();
    }
    let budget = limit - ellipsis.chars().map(cost).sum::<usize>();
    let mut used = 0;
    let mut out: String = text
        .chars()
        .take_while(|c| {
            used += cost(*c);
            used <= budget
        })
        .collect();
    out.truncate(out.trim_end().len());
    out.push_str(ellipsis);
    out
}

/// Where text messages go.
pub enum SmsTransport {
    /// POST to a provider.
    Http {
        client: reqwest::Client,
        url: String,
        auth_header: Option<(String, String)>,
        body_template: String,
    },
    /// Append one JSON line per message to a file (the embedded default).
    Log(PathBuf),
}

impl SmsTransport {
    /// The configured provider, or the log file in the data dir.
    pub fn from_config(config: &SmsConfig, log_file: PathBuf) -> anyhow::Result<SmsTransport> {
        let Some(url) = &config.url else {
            return Ok(SmsTransport::Log(log_file));
        };
        let auth_header = match &config.auth_header {
            Some(header) => {
                let (name, value) = header
                    .expose()
                    .split_once(':')
                    .context("notify.sms.auth_header must look like `Name: value`")?;
                Some((name.trim().to_owned(), value.trim().to_owned()))
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .context("cannot build the SMS HTTP client")?;
        Ok(SmsTransport::Http {
            client,
            url: url.clone(),
            auth_header,
            body_template: config.body_template.clone(),
        })
    }

    /// Sends one message: 2xx is sent, 4xx permanent, 5xx and timeouts retried.
    pub async fn send(
        &self,
        templates: &Templates,
        number: &str,
        text: &str,
    ) -> Result<(), SendError> {
        match self {
            SmsTransport::Http {
                client,
                url,
                auth_header,
                body_template,
            } => {
                let body = templates
                    .render_str(body_template, json!({"number": number, "text": text}))
                    .map_err(|err| {
                        SendError::Permanent(format!("notify.sms.body_template: {err}"))
                    })?;
                let mut request = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body);
                if let Some((name, value)) = auth_header {
                    request = request.header(name.as_str(), value.as_str());
                }
                let response = request
                    .send()
                    .await
                    .map_err(|err| SendError::Retry(format!("SMS provider: {err}")))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else if status.is_server_error() || status.as_u16() == 429 {
                    Err(SendError::Retry(format!("SMS provider answered {status}")))
                } else {
                    Err(SendError::Permanent(format!(
                        "SMS provider answered {status}"
                    )))
                }
            }
            SmsTransport::Log(path) => {
                let line = format!(
                    "{}\n",
                    json!({"to": number, "text": text, "at_ms": super::now_ms()})
                );
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .await
                    .map_err(|err| {
                        SendError::Retry(format!("cannot open {}: {err}", path.display()))
                    })?;
                file.write_all(line.as_bytes()).await.map_err(|err| {
                    SendError::Retry(format!("cannot write {}: {err}", path.display()))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeezes_to_one_sms() {
        assert_eq!(squeeze("Mail from Bob"), "Mail from Bob");
        let long = "x".repeat(200);
        let cut = squeeze(&long);
        assert_eq!(cut.chars().count(), 160);
        assert!(cut.ends_with("..."));
        // Extension characters cost two septets.
        let braces = "{".repeat(100);
        assert_eq!(squeeze(&braces), format!("{}...", "{".repeat(78)));
        // Anything outside GSM-7 makes it UCS-2: 70 units, "…" included.
        let cyrillic = "Привет ".repeat(20);
        let cut = squeeze(&cyrillic);
        assert_eq!(
            cut.encode_utf16().count(),
            70.min(cut.encode_utf16().count())
        );
        assert!(
            cut.encode_utf16().count() <= 70 && cut.ends_with('…'),
            "{cut}"
        );
        // An emoji is two UTF-16 units.
        let emoji = "📬".repeat(40);
        let cut = squeeze(&emoji);
        assert!(
            cut.encode_utf16().count() <= 70,
            "{}",
            cut.encode_utf16().count()
        );
        assert_eq!(squeeze(&"ä".repeat(160)), "ä".repeat(160), "ä is GSM-7");
    }
}
