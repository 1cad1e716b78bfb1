//! Every knob described once, for both front doors: the command line (clap) and the daemon's TOML (serde) read the
//! same structs — `Transfer` (the objective and its schedule), `Stream` (how consecutive frames are used), `Runtime`
//! (ONNX Runtime and its providers) — with one conversion and one validation each. Where the doors' defaults differ
//! (a kiosk camera's frame is smaller and cheaper than a single image), the difference is data: a `Profile`.
//!
//! A knob has one name: `--image-size` on the command line is `image_size` in TOML. Older spellings stay accepted
//! and are listed as deprecated where they are declared (and in README.md / deploy/fuchun.example.toml).

pub mod runtime;
pub mod stream;
pub mod transfer;

pub use runtime::Runtime;
pub use stream::Stream;
pub use transfer::{Profile, Transfer};

/// Which door a setting came through, so that an error names the knob as the user wrote it: `--image-size` on the
/// command line, `styles.ink.image_size` in the configuration.
#[derive(Debug, Clone)]
pub enum Door {
    Cli,
    /// TOML, with the table the knob lives in (e.g. `styles.ink`, `daemon.temporal`, `model`).
    Toml(String),
}

impl Door {
    /// The knob `name` (snake_case, as declared) as this door spells it.
    pub fn name(&self, name: &str) -> String {
        match self {
            Door::Cli => format!("--{}", name.replace('_', "-")),
            Door::Toml(table) if table.is_empty() => name.to_string(),
            Door::Toml(table) => format!("{table}.{name}"),
        }
    }
}

/// serde: a value given as a string and parsed by its `FromStr` (providers, palettes, search modes), so that TOML and
/// the command line accept the same spellings.
pub(crate) fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// As `from_str`, for an optional value.
pub(crate) fn opt_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    from_str(d).map(Some)
}

/// The defaults of a family as clap declares them (`default_value_t`), so that serde's `#[serde(default)]` uses the
/// very same values: each default is written once, in the `#[arg]` beside its knob.
pub(crate) fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let m = cmd.try_get_matches_from(Vec::<String>::new()).expect("every knob has a default or is optional");
    T::from_arg_matches(&m).expect("defaults convert")
}
