//! The command line: `kvfs [-f] [-o OPTS] SOURCE MOUNTPOINT`, and mount(8)'s
//! helper form `mount.kvfs SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-v] [-f]`.

use std::path::PathBuf;
use std::time::Duration;

/// Default names kept local to the mount: vim swap files, vim's write probe,
/// backup files.
pub const DEFAULT_LOCAL: &[&str] = &[".*.sw?", "4913", "*~"];

/// Usage text.
pub const USAGE: &str = "usage: kvfs [-f] [-o OPTION[,OPTION...]] SOURCE MOUNTPOINT

Mount the keys under SOURCE's path as a directory tree.
SOURCE is a client URL whose path is the key prefix, e.g. http://127.0.0.1:7379/app

  -f                  stay in the foreground (otherwise return once mounted)
  -o ro               read-only mount
  -o allow_other      let other users use the mount
  -o default_permissions  let the kernel check permissions from the modes
  -o endpoints=URL+URL    more cluster members to fail over to
  -o local=GLOB:GLOB  names kept local to the mount (default .*.sw?:4913:*~)
  -o timeout=SECS     how long a write may wait for the cluster (default 5)
  -o cache_dir=DIR    where the last-known-good copy lives
  -o status_dir=DIR   where the status file lives (default /run/kvfs)
  -o token_file=PATH  file holding the bearer token for the cluster
  -o ca_file=PATH     CA certificate(s) (PEM) for https:// sources

Mount options kvfs does not use (_netdev, nofail, x-systemd.*, auto, ...)
are ignored when called as mount.kvfs or mount.fuse.kvfs.

Example:
  kvfs http://127.0.0.1:7379/app /etc/app";

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Stay in the foreground.
    pub foreground: bool,
    /// mount(8)'s -f: pretend, do nothing.
    pub fake: bool,
    /// Cluster member URLs (scheme and authority).
    pub endpoints: Vec<String>,
    /// Key prefix ("" for the whole keyspace).
    pub prefix: String,
    /// The source as given (shown as the mount's source).
    pub source: String,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Read-only.
    pub ro: bool,
    /// allow_other.
    pub allow_other: bool,
    /// default_permissions.
    pub default_permissions: bool,
    /// Names kept local.
    pub local: Vec<String>,
    /// Bound on waiting for the cluster.
    pub timeout: Duration,
    /// Last-known-good cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Status file directory.
    pub status_dir: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// CA certificates for https:// endpoints.
    pub ca_file: Option<PathBuf>,
}

/// What parsing decided.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these settings.
    Run(Box<Invocation>),
    /// Print this and exit 0 (help, version).
    Print(String),
}

/// Parses arguments (without argv[0]). `helper` is mount(8)'s calling form.
pub fn parse(args: &[String], helper: bool) -> Result<Parsed, String> {
    let mut pos = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let (mut foreground, mut fake) = (false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Ok(Parsed::Print(USAGE.into())),
            "-V" | "--version" => return Ok(Parsed::Print(format!("kvfs {}", env!("CARGO_PKG_VERSION")))),
            "-o" => opts.extend(it.next().ok_or("-o needs a value")?.split(',').map(str::to_owned)),
            o if o.starts_with("-o") => opts.extend(o[2..].split(',').map(str::to_owned)),
            "-f" if helper => fake = true,
            "-f" => foreground = true,
            "-n" | "-s" | "-v" if helper => {}
            o if o.starts_with('-') && o.len() > 1 => return Err(format!("unknown flag {o}\n\n{USAGE}")),
            p => pos.push(p.to_owned()),
        }
    }
    let [source, mountpoint] =
        <[String; 2]>::try_from(pos).map_err(|_| format!("need SOURCE and MOUNTPOINT\n\n{USAGE}"))?;
    let (base, prefix) = split_source(&source)?;
    let mut inv = Invocation {
        foreground,
        fake,
        endpoints: vec![base],
        prefix,
        source: source.clone(),
        mountpoint: PathBuf::from(mountpoint),
        ro: false,
        allow_other: false,
        default_permissions: false,
        local: DEFAULT_LOCAL.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(5),
        cache_dir: None,
        status_dir: None,
        token_file: None,
        ca_file: None,
    };
    for o in opts.iter().filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').map_or((o.as_str(), None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("ro", None) => inv.ro = true,
            ("rw", None) => inv.ro = false,
            ("allow_other", None) => inv.allow_other = true,
            ("default_permissions", None) => inv.default_permissions = true,
            ("endpoints", Some(v)) => {
                for e in v.split(['+', ';']).filter(|e| !e.is_empty()) {
                    inv.endpoints.push(split_source(e)?.0);
                }
            }
            ("local", Some(v)) => inv.local = v.split(':').filter(|g| !g.is_empty()).map(str::to_owned).collect(),
            ("timeout", Some(v)) => {
                let secs: f64 = v.parse().map_err(|_| format!("timeout={v}: expected seconds"))?;
                if !(secs > 0.0 && secs <= 3600.0) {
                    return Err(format!("timeout={v}: expected 0 < seconds <= 3600"));
                }
                inv.timeout = Duration::from_secs_f64(secs);
            }
            ("cache_dir", Some(v)) => inv.cache_dir = Some(v.into()),
            ("status_dir", Some(v)) => inv.status_dir = Some(v.into()),
            ("token_file", Some(v)) => inv.token_file = Some(v.into()),
            ("ca_file", Some(v)) => inv.ca_file = Some(v.into()),
            // Generic mount options with no meaning here.
            (
                "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "_netdev" | "nofail" | "dev" | "nodev"
                | "suid" | "nosuid" | "exec" | "noexec" | "atime" | "noatime" | "relatime" | "async",
                None,
            ) => {}
            (k, _) if k.starts_with("x-") || k.starts_with("comment=") => {}
            _ if helper => {}
            _ => return Err(format!("unknown mount option {o:?}\n\n{USAGE}")),
        }
    }
    Ok(Parsed::Run(Box::new(inv)))
}

/// Splits `http://host:port/a/b` into `http://host:port` and the prefix `a/b`.
/// `kvfs#URL` (the fstab form for type `fuse`) is accepted too.
pub fn split_source(source: &str) -> Result<(String, String), String> {
    let s = source.strip_prefix("kvfs#").unwrap_or(source);
    let rest =
        s.strip_prefix("http://").map(|r| ("http", r)).or_else(|| s.strip_prefix("https://").map(|r| ("https", r)));
    let Some((scheme, rest)) = rest else {
        return Err(format!("{source:?} is not a client URL like http://127.0.0.1:7379/app"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(format!("{source:?} has no host"));
    }
    let prefix = kv_client::normalize_prefix(path.trim_start_matches('/'))
        .map_err(|e| format!("{source:?}: bad key prefix: {e}"))?
        .to_owned();
    Ok((format!("{scheme}://{authority}"), prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn run(p: Parsed) -> Invocation {
        match p {
            Parsed::Run(i) => *i,
            Parsed::Print(s) => panic!("printed {s}"),
        }
    }

    #[test]
    fn kvfs_form_with_options() {
        let i =
            run(parse(&args("-f -o ro,allow_other,timeout=2.5,local=*.tmp http://h:1/app/x /mnt"), false).expect("ok"));
        assert!(i.foreground && i.ro && i.allow_other && !i.fake);
        assert_eq!((i.endpoints[0].as_str(), i.prefix.as_str()), ("http://h:1", "app/x"));
        assert_eq!(i.timeout, Duration::from_millis(2500));
        assert_eq!(i.local, vec!["*.tmp".to_owned()]);
        let i = run(parse(&args("-o token_file=/t,ca_file=/c https://h:1/a /m"), false).expect("ok"));
        assert_eq!((i.token_file, i.ca_file), (Some("/t".into()), Some("/c".into())));
        assert!(parse(&args("-o bogus http://h:1 /mnt"), false).is_err());
        assert!(parse(&args("http://h:1"), false).is_err());
        assert!(parse(&args("-o timeout=0 http://h:1 /m"), false).is_err());
    }

    #[test]
    fn helper_form_ignores_what_it_does_not_know() {
        let i =
            run(parse(&args("kvfs#http://h:1/app /etc/app -o rw,_netdev,nofail,x-systemd.automount,frob -n"), true)
                .expect("ok"));
        assert_eq!(i.prefix, "app");
        assert!(!i.foreground && !i.fake);
        assert!(run(parse(&args("http://h:1 /m -f"), true).expect("ok")).fake);
    }

    #[test]
    fn sources_are_checked() {
        assert_eq!(split_source("http://h:1").expect("ok"), ("http://h:1".into(), String::new()));
        assert_eq!(split_source("http://h:1/").expect("ok").1, "");
        assert!(split_source("h:1/app").is_err());
        assert!(split_source("http://h:1/a//b").is_err());
        let i = run(parse(&args("-o endpoints=http://h:2+http://h:3 http://h:1/a /m"), false).expect("ok"));
        assert_eq!(i.endpoints, vec!["http://h:1", "http://h:2", "http://h:3"]);
    }

    #[test]
    fn the_man_page_names_every_option() {
        let man = include_str!("../../man/kvfs.8");
        for line in USAGE.lines() {
            let Some(rest) = line.trim_start().strip_prefix("-o ") else { continue };
            let name = rest.split(['=', ' ']).next().unwrap_or_default();
            assert!(
                man.contains(&format!("B {name}")) || man.contains(&format!("BI {name}=")),
                "man/kvfs.8 lacks {name}"
            );
        }
    }
}
