//! Reading a `dovecot.conf` as Dovecot 2.3 does: `key = value`, sections `name [arg] { … }`,
//! `#` comments, `!include` and `!include_try` (relative to the including file, with `*`
//! globs), and `$mail_plugins` standing for the value set before. Each setting keeps where it
//! was read, for the checks' messages.

use std::path::{Path, PathBuf};

use super::Report;

/// One `key = value` of the configuration, with where it was read.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    /// `file:line`, for messages.
    pub(super) at: String,
    /// The sections it is in, outermost first (`plugin`, `protocol lmtp`).
    pub(super) section: Vec<String>,
    pub(super) key: String,
    pub(super) value: String,
}

/// The whole configuration, includes read, in order.
pub(super) struct DovecotConf {
    pub(super) settings: Vec<Setting>,
}

/// Includes nested deeper than this are not read (a loop, most likely).
const MAX_INCLUDE_DEPTH: usize = 8;

impl DovecotConf {
    pub(super) fn read(source: &Path, report: &mut Report) -> Option<DovecotConf> {
        let mut conf = DovecotConf {
            settings: Vec::new(),
        };
        let mut sections = Vec::new();
        match std::fs::read_to_string(source) {
            Ok(text) => conf.parse(source, &text, &mut sections, 0, report),
            Err(err) => {
                report.fault(format!("cannot read {}: {err}", source.display()));
                return None;
            }
        }
        Some(conf)
    }

    fn parse(
        &mut self,
        file: &Path,
        text: &str,
        sections: &mut Vec<String>,
        depth: usize,
        report: &mut Report,
    ) {
        for (index, line) in text.lines().enumerate() {
            let at = format!("{}:{}", file.display(), index + 1);
            let line = strip_comment(line).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('!') {
                let (directive, pattern) =
                    rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let optional = directive == "include_try";
                if directive != "include" && !optional {
                    continue;
                }
                self.include(file, pattern.trim(), optional, &at, sections, depth, report);
            } else if line == "}" {
                sections.pop();
            } else if let Some(head) = line.strip_suffix('{') {
                sections.push(head.split_whitespace().collect::<Vec<_>>().join(" "));
            } else if let Some((key, value)) = line.split_once('=') {
                self.settings.push(Setting {
                    at,
                    section: sections.clone(),
                    key: key.trim().to_owned(),
                    value: unquote(value.trim()).to_owned(),
                });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn include(
        &mut self,
        from: &Path,
        pattern: &str,
        optional: bool,
        at: &str,
        sections: &mut Vec<String>,
        depth: usize,
        report: &mut Report,
    ) {
        if depth >= MAX_INCLUDE_DEPTH {
            report.warn(format!("{at}: includes nested too deep; not read"));
            return;
        }
        let pattern = Path::new(unquote(pattern));
        let pattern = match from.parent() {
            Some(dir) if pattern.is_relative() => dir.join(pattern),
            _ => pattern.to_owned(),
        };
        let files = expand_glob(&pattern);
        if files.is_empty() && !optional && !pattern.to_string_lossy().contains('*') {
            report.fault(format!(
                "{at}: !include {} does not exist: Dovecot refuses to start",
                pattern.display()
            ));
        }
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => self.parse(&file, &text, sections, depth + 1, report),
                Err(err) if !optional => {
                    report.fault(format!("{at}: cannot read {}: {err}", file.display()))
                }
                Err(_) => {}
            }
        }
    }

    /// Every setting of `key` in exactly the sections `section`, in order.
    pub(super) fn all(&self, section: &[&str], key: &str) -> Vec<&Setting> {
        self.settings
            .iter()
            .filter(|s| {
                s.key == key
                    && s.section
                        .iter()
                        .map(String::as_str)
                        .eq(section.iter().copied())
            })
            .collect()
    }

    /// The last setting of `key` in `section`, which is the one Dovecot uses.
    pub(super) fn last(&self, section: &[&str], key: &str) -> Option<&Setting> {
        self.all(section, key).pop()
    }

    /// `mail_plugins` as a service sees it: the global value, then the protocol's own (where
    /// `$mail_plugins` stands for the global one). Returns the plugins and where they were set.
    pub(super) fn plugins(&self, protocol: Option<&str>) -> (Vec<String>, Option<String>) {
        let mut plugins: Vec<String> = Vec::new();
        let mut at = None;
        for setting in self.all(&[], "mail_plugins") {
            plugins = expand(&setting.value, &plugins);
            at = Some(setting.at.clone());
        }
        if let Some(protocol) = protocol {
            let section = format!("protocol {protocol}");
            let global = plugins.clone();
            for setting in self.all(&[section.as_str()], "mail_plugins") {
                plugins = expand(&setting.value, &global);
                at = Some(setting.at.clone());
            }
        }
        (plugins, at)
    }
}

/// The plugins a `mail_plugins` value names, `$mail_plugins` standing for `before`.
pub(super) fn expand(value: &str, before: &[String]) -> Vec<String> {
    let mut plugins = Vec::new();
    for word in value.split_whitespace() {
        if word == "$mail_plugins" {
            plugins.extend(before.iter().cloned());
        } else if !plugins.iter().any(|p| p == word) {
            plugins.push(word.to_owned());
        }
    }
    plugins
}

fn strip_comment(line: &str) -> &str {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') {
        return "";
    }
    match line.find(" #").or_else(|| line.find("\t#")) {
        Some(at) if !line[..at].contains('"') => &line[..at],
        _ => line,
    }
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// The files a path with `*` in its last part names, sorted (Dovecot reads them in order).
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some((prefix, suffix)) = name.split_once('*') else {
        return if pattern.exists() {
            vec![pattern.to_owned()]
        } else {
            Vec::new()
        };
    };
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.is_some_and(|name| {
                        name.starts_with(prefix)
                            && name.ends_with(suffix)
                            && name.len() >= prefix.len() + suffix.len()
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
