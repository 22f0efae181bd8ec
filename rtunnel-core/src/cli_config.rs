//! Settings files for the binaries: a TOML file whose keys are the long
//! flags' names (`listen`, `public_url`, `grace_period`, ...), read with
//! `--config FILE`.
//!
//! Precedence is the usual one: a flag beats its environment variable,
//! which beats the file, which beats the default. The file is applied by
//! handing clap the flags it stands for, for every setting the command line
//! and the environment left unset, so a value in the file goes through the
//! same parser, with the same checks and messages, as the flag.
//!
//! ```
//! use clap::{CommandFactory, FromArgMatches, Parser};
//! use rtunnel_core::cli_config::ConfigFile;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[arg(long)]
//!     config: Option<std::path::PathBuf>,
//!     #[arg(long, default_value = "127.0.0.1:8080")]
//!     listen: String,
//!     #[arg(long, default_value = "localhost")]
//!     domain: String,
//! }
//!
//! let file = ConfigFile::parse("example.toml".as_ref(), "listen = \"0.0.0.0:80\"\ndomain = \"f\"")?;
//! let mut argv = vec!["prog".to_owned(), "--domain=flag".to_owned()];
//! let first = Cli::command().try_get_matches_from(&argv)?;
//! argv.extend(file.flags(&Cli::command(), &[&first])?);
//! let cli = Cli::try_parse_from(argv)?;
//! assert_eq!(cli.listen, "0.0.0.0:80"); // from the file
//! assert_eq!(cli.domain, "flag"); // the flag wins
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The largest settings file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not readable.
    #[error("cannot read the config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Larger than [`MAX_CONFIG_BYTES`].
    #[error("the config file {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not TOML.
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line.
        message: String,
    },
    /// A key that names no setting, or a value of the wrong shape.
    #[error("in the config file {path}: {message}")]
    Setting {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A parsed settings file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
}

impl ConfigFile {
    /// Reads and parses `path` (at most [`MAX_CONFIG_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        use std::io::Read;
        let read = |error| ConfigError::Read {
            path: path.to_owned(),
            error,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::parse(path, &text)
    }

    /// Parses `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::Syntax {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            table,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes and returns a key the program reads itself (a table of
    /// services, say), so [`Self::flags`] does not take it for a flag.
    pub fn take(&mut self, key: &str) -> Option<toml::Value> {
        self.table.remove(key)
    }

    /// The settings the file holds, as parsed.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::Setting {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The flags (`--name=value`) that stand for the file's settings the
    /// command line and the environment did not give. `command` is the
    /// command whose flags the file may set; `given` are the matches of a
    /// first parse of the real command line (the command's and, for
    /// global flags, its subcommands'). Append the result to the command
    /// line and parse again.
    ///
    /// Keys are the flags' ids (`public_url`; `public-url` is taken too).
    /// A string is passed as it is, a number as written, `true` turns a
    /// switch on (`false` leaves it off), a list is joined with commas.
    /// `config`, `help` and `version` cannot be set from the file.
    pub fn flags(
        &self,
        command: &Command,
        given: &[&ArgMatches],
    ) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for (key, value) in &self.table {
            let id = key.replace('-', "_");
            let arg = command
                .get_arguments()
                .filter(|a| !matches!(a.get_id().as_str(), "config" | "help" | "version"))
                .find(|a| a.get_id() == id.as_str() && a.get_long().is_some());
            let Some(arg) = arg else {
                return Err(self.error(format!(
                    "unknown setting `{key}` (the settings are: {})",
                    settable(command).join(", ")
                )));
            };
            let long = arg.get_long().unwrap_or_default();
            let from_outside = given.iter().any(|m| {
                m.ids().any(|i| i.as_str() == id)
                    && matches!(
                        m.value_source(&id),
                        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                    )
            });
            if from_outside {
                continue;
            }
            let switch = matches!(arg.get_action(), ArgAction::SetTrue);
            match (value, switch) {
                (toml::Value::Boolean(true), true) => out.push(format!("--{long}")),
                (toml::Value::Boolean(false), true) => {}
                (_, true) => {
                    return Err(self.error(format!("`{key}` is true or false")));
                }
                (value, false) => {
                    let text = scalar_text(value)
                        .or_else(|| match value {
                            toml::Value::Array(items) => items
                                .iter()
                                .map(scalar_text)
                                .collect::<Option<Vec<_>>>()
                                .map(|v| v.join(",")),
                            _ => None,
                        })
                        .ok_or_else(|| {
                            self.error(format!(
                                "`{key}` must be a string, a number, true/false or a list of them"
                            ))
                        })?;
                    out.push(format!("--{long}={text}"));
                }
            }
        }
        Ok(out)
    }
}

/// `matches` and those of its subcommands, outermost first.
pub fn chain(matches: &ArgMatches) -> Vec<&ArgMatches> {
    let mut out = vec![matches];
    while let Some((_, sub)) = out[out.len() - 1].subcommand() {
        out.push(sub);
    }
    out
}

/// The value of the path flag `id` (`config`) in any of `given`.
pub fn path_in(given: &[&ArgMatches], id: &str) -> Option<PathBuf> {
    given
        .iter()
        .rev()
        .find_map(|m| m.try_get_one::<PathBuf>(id).ok().flatten().cloned())
}

/// A clap error as one line, without `error: ` and the usage that
/// follows: `invalid value 'many' for '--max-streams <N>': ...`.
pub fn describe(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// A scalar as the flag would take it.
fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The keys a file may hold for `command`.
fn settable(command: &Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !a.is_hide_set())
        .map(|a| a.get_id().to_string())
        .filter(|id| !matches!(id.as_str(), "config" | "help" | "version"))
        .collect()
}

/// Whether `path` may be read by users other than its owner and group
/// members (Unix): a file with a secret in it should not be.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, env = "CLI_CONFIG_TEST_LISTEN", default_value = "127.0.0.1:1")]
        listen: String,
        #[arg(long, default_value_t = 4)]
        max_streams: usize,
        #[arg(long)]
        quiet: bool,
        #[arg(long, value_delimiter = ',')]
        url: Vec<String>,
    }

    fn parse(file: &str, argv: &[&str]) -> Result<Cli, String> {
        let file = ConfigFile::parse("t.toml".as_ref(), file).map_err(|e| e.to_string())?;
        let mut argv: Vec<String> = std::iter::once("prog")
            .chain(argv.iter().copied())
            .map(String::from)
            .collect();
        let first = Cli::command().try_get_matches_from(&argv).unwrap();
        argv.extend(
            file.flags(&Cli::command(), &[&first])
                .map_err(|e| e.to_string())?,
        );
        Cli::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn the_file_fills_what_the_command_line_left() {
        let cli = parse(
            "listen = \"0.0.0.0:80\"\nmax-streams = 9\nquiet = true\nurl = [\"a\", \"b\"]",
            &[],
        )
        .unwrap();
        assert_eq!(cli.listen, "0.0.0.0:80");
        assert_eq!(cli.max_streams, 9);
        assert!(cli.quiet);
        assert_eq!(cli.url, ["a", "b"]);
        let cli = parse(
            "listen = \"0.0.0.0:80\"\nquiet = false",
            &["--listen", "x:1"],
        )
        .unwrap();
        assert_eq!(cli.listen, "x:1");
        assert!(!cli.quiet);
        assert_eq!(cli.max_streams, 4);
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse("lisen = \"x\"", &[]).unwrap_err();
        assert!(e.contains("unknown setting `lisen`"), "{e}");
        assert!(e.contains("listen, max_streams, quiet, url"), "{e}");
        assert!(e.contains("t.toml"), "{e}");
        let e = parse("quiet = \"yes\"", &[]).unwrap_err();
        assert!(e.contains("true or false"), "{e}");
        let e = parse("listen = { a = 1 }", &[]).unwrap_err();
        assert!(e.contains("must be a string"), "{e}");
        let e = parse("config = \"other.toml\"", &[]).unwrap_err();
        assert!(e.contains("unknown setting `config`"), "{e}");
        let e = parse("listen = ", &[]).unwrap_err();
        assert!(e.contains("not valid TOML") && e.contains("line 1"), "{e}");
        // A value of the wrong kind fails in the flag's own parser.
        let e = parse("max_streams = \"many\"", &[]).unwrap_err();
        assert!(e.contains("--max-streams"), "{e}");
    }

    #[test]
    fn a_file_too_large_is_refused() {
        let dir = std::env::temp_dir().join(format!("cli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.toml");
        std::fs::write(&path, "#".repeat(MAX_CONFIG_BYTES as usize + 1)).unwrap();
        let e = ConfigFile::load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
        let e = ConfigFile::load(&dir.join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
