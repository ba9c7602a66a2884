//! Templates for notification emails and SMS bodies: minijinja over `templates/`, one file per
//! kind, language and part (`alarm/de.subject.j2`, `alarm/de.txt.j2`, `alarm/de.html.j2`), with
//! `en` as the fallback language. Also the date wording the templates show.

use std::path::Path;

use anyhow::Context;
use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use time::{Date, Month, Time};

/// The loaded templates.
pub struct Templates {
    env: Environment<'static>,
}

/// The templates shipped in `templates/`, built in so an installed binary works anywhere; files
/// in `notify.templates_dir` replace them name by name.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "alarm/en.subject.j2",
        include_str!("../../templates/alarm/en.subject.j2"),
    ),
    (
        "alarm/en.txt.j2",
        include_str!("../../templates/alarm/en.txt.j2"),
    ),
    (
        "alarm/en.html.j2",
        include_str!("../../templates/alarm/en.html.j2"),
    ),
    (
        "alarm/de.subject.j2",
        include_str!("../../templates/alarm/de.subject.j2"),
    ),
    (
        "alarm/de.txt.j2",
        include_str!("../../templates/alarm/de.txt.j2"),
    ),
    (
        "alarm/de.html.j2",
        include_str!("../../templates/alarm/de.html.j2"),
    ),
];

impl Templates {
    /// The built-in templates, then every `*.j2` file under `dir` (names are paths relative
    /// to it); a missing `dir` leaves the built-in ones.
    pub fn load(dir: &Path) -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html.j2") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        for (name, source) in BUILT_IN {
            env.add_template(name, source)
                .with_context(|| format!("built-in template {name}"))?;
        }
        if !dir.exists() {
            tracing::info!(dir = %dir.display(), "no templates folder: using the built-in templates");
            return Ok(Templates { env });
        }
        let mut pending = vec![dir.to_path_buf()];
        while let Some(folder) = pending.pop() {
            let entries = std::fs::read_dir(&folder)
                .with_context(|| format!("cannot read templates in {}", folder.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path.extension().is_some_and(|ext| ext == "j2") {
                    let name = path
                        .strip_prefix(dir)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .replace('\\', "/");
                    let source = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    env.add_template_owned(name, source)
                        .with_context(|| format!("template {} does not parse", path.display()))?;
                }
            }
        }
        Ok(Templates { env })
    }

    /// Renders `<kind>/<lang>.<part>.j2`, falling back to `en` when the language has none.
    pub fn render(
        &self,
        kind: &str,
        lang: &str,
        part: &str,
        context: impl Serialize,
    ) -> Result<String, minijinja::Error> {
        let wanted = format!("{kind}/{lang}.{part}.j2");
        let template = match self.env.get_template(&wanted) {
            Ok(template) => template,
            Err(_) => self.env.get_template(&format!("{kind}/en.{part}.j2"))?,
        };
        template.render(minijinja::value::Serde(&context))
    }

    /// Renders a template given as text (the SMS body template from the configuration).
    pub fn render_str(
        &self,
        source: &str,
        context: impl Serialize,
    ) -> Result<String, minijinja::Error> {
        self.env
            .render_str(source, minijinja::value::Serde(&context))
    }
}

/// An iCalendar date or date-time (`20261128`, `20261128T150053`, `20261128T150053Z`) in words,
/// in the zone Cyrus gives it in: "Saturday, 28 November 2026, 15:00" / "Samstag, 28. November
/// 2026, 15:00". The text as given when it does not parse.
pub fn ical_when(value: &str, lang: &str) -> String {
    let Some((date, time)) = parse_ical(value) else {
        return value.to_owned();
    };
    let (weekday, month) = if lang == "de" {
        (
            WEEKDAYS_DE[date.weekday().number_days_from_monday() as usize],
            MONTHS_DE[usize::from(u8::from(date.month())) - 1],
        )
    } else {
        (
            WEEKDAYS_EN[date.weekday().number_days_from_monday() as usize],
            MONTHS_EN[usize::from(u8::from(date.month())) - 1],
        )
    };
    let day = if lang == "de" {
        format!("{weekday}, {}. {month} {}", date.day(), date.year())
    } else {
        format!("{weekday}, {} {month} {}", date.day(), date.year())
    };
    match time {
        Some(time) => format!("{day}, {:02}:{:02}", time.hour(), time.minute()),
        None => day,
    }
}

const WEEKDAYS_EN: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const WEEKDAYS_DE: [&str; 7] = [
    "Montag",
    "Dienstag",
    "Mittwoch",
    "Donnerstag",
    "Freitag",
    "Samstag",
    "Sonntag",
];
const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

fn parse_ical(value: &str) -> Option<(Date, Option<Time>)> {
    let value = value.trim_end_matches('Z');
    let (date, time) = value
        .split_once('T')
        .map_or((value, None), |(d, t)| (d, Some(t)));
    let number = |text: &str, range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    if date.len() != 8 {
        return None;
    }
    let month = Month::try_from(u8::try_from(number(date, 4..6)?).ok()?).ok()?;
    let date = Date::from_calendar_date(
        i32::try_from(number(date, 0..4)?).ok()?,
        month,
        u8::try_from(number(date, 6..8)?).ok()?,
    )
    .ok()?;
    let time = match time {
        Some(time) if time.len() >= 4 => Some(
            Time::from_hms(
                u8::try_from(number(time, 0..2)?).ok()?,
                u8::try_from(number(time, 2..4)?).ok()?,
                0,
            )
            .ok()?,
        ),
        Some(_) => return None,
        None => None,
    };
    Some((date, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ical_dates_in_words() {
        assert_eq!(
            ical_when("20261128T150053Z", "en"),
            "Saturday, 28 November 2026, 15:00"
        );
        assert_eq!(
            ical_when("20261128T150053Z", "de"),
            "Samstag, 28. November 2026, 15:00"
        );
        assert_eq!(ical_when("20260301", "de"), "Sonntag, 1. März 2026");
        assert_eq!(ical_when("garbage", "en"), "garbage");
        assert_eq!(ical_when("20261399T000000", "en"), "20261399T000000");
    }

    #[test]
    fn templates_fall_back_to_english_and_escape_html() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kind")).unwrap();
        std::fs::write(dir.path().join("kind/en.txt.j2"), "Hello {{ name }}").unwrap();
        std::fs::write(dir.path().join("kind/en.html.j2"), "<p>{{ name }}</p>").unwrap();
        std::fs::write(dir.path().join("kind/de.txt.j2"), "Hallo {{ name }}").unwrap();
        let templates = Templates::load(dir.path()).unwrap();
        let context = serde_json::json!({"name": "<Bob>"});
        assert!(
            templates
                .render(
                    "alarm",
                    "de",
                    "subject",
                    serde_json::json!({"summary": "x"})
                )
                .unwrap()
                .starts_with("Erinnerung: x")
        );
        assert_eq!(
            templates.render("kind", "de", "txt", &context).unwrap(),
            "Hallo <Bob>"
        );
        assert_eq!(
            templates.render("kind", "fr", "txt", &context).unwrap(),
            "Hello <Bob>"
        );
        assert_eq!(
            templates.render("kind", "de", "html", &context).unwrap(),
            "<p>&lt;Bob&gt;</p>"
        );
        assert!(templates.render("other", "en", "txt", &context).is_err());
    }
}
