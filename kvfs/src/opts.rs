//! The command line: `kvfs [-f] [-o OPTS] SOURCE MOUNTPOINT`, and mount(8)'s
//! helper form `mount.kvfs SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-v] [-f]`.

use std::path::PathBuf;
use std::time::Duration;

pub use kvfs::AttrMap;

/// Default names kept local to the mount: vim swap files, vim's write probe,
/// backup files.
pub const DEFAULT_LOCAL: &[&str] = &[".*.sw?", "4913", "*~"];

/// Usage text.
pub const USAGE: &str = "usage: kvfs [-f] [-o OPTION[,OPTION...]] SOURCE MOUNTPOINT

Mount the keys under SOURCE's path as a directory tree.
SOURCE is a client URL whose path is the key prefix, e.g. http://127.0.0.1:7379/app

  -f                  stay in the foreground (otherwise return once mounted)
  -o ro               read-only mount
  -o allow_other      let other users use the mount (the default when root mounts)
  -o allow_root       only root and the mounting user may use the mount
  -o default_permissions  the kernel checks the stored modes and owners
                      (the default whenever other users can use the mount)
  -o nodefault_permissions  no mode checks: with allow_other, every local
                      user may read and write every file the token reaches
  -o uid=USER         show every entry as owned by USER (name or number)
  -o gid=GROUP        show every entry as owned by GROUP (name or number)
  -o umask=OCTAL      clear these bits of every stored mode (e.g. 027)
  -o fmode=OCTAL      show every file with this mode
  -o dmode=OCTAL      show every directory with this mode
  -o endpoints=URL+URL    more cluster members to fail over to
  -o local=GLOB:GLOB  names kept local to the mount (default .*.sw?:4913:*~)
  -o timeout=SECS     how long a write may wait for the cluster (default 5)
  -o cache_dir=DIR    where the last-known-good copy lives
  -o status_dir=DIR   where the status file lives (default /run/kvfs)
  -o token_file=PATH  file holding the bearer token for the cluster
  -o ca_file=PATH     CA certificate(s) (PEM) for https:// sources
  -o metrics_addr=HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics
                      (port 0: any free port, written in the status file)
  -o log_format=text|json  log lines as text (default) or one JSON object per line
  -o passthrough      the kernel reads open files from a copy in memory, with
                      no round trip to kvfs (root, Linux 6.9 or later); see
                      kvfs(8) for the one thing it gives up

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
    /// Who may use the mount besides its owner (`None`: the default).
    pub allow: Option<Allow>,
    /// Whether the kernel checks modes (`None`: the default).
    pub default_permissions: Option<bool>,
    /// How stored owners and modes are shown.
    pub attr_map: AttrMap,
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
    /// Where to serve Prometheus metrics (`HOST:PORT`).
    pub metrics_addr: Option<String>,
    /// Log one JSON object per line instead of text.
    pub log_json: bool,
    /// FUSE passthrough for reads.
    pub passthrough: bool,
}

/// `allow_other` or `allow_root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Every local user.
    Other,
    /// Root and the mounting user.
    Root,
}

/// Who may use a mount, as the kernel is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Users other than root and the mounting one may use it.
    pub others: bool,
    /// The kernel checks the stored modes and owners.
    pub default_permissions: bool,
}

impl Invocation {
    /// Who may use the mount. A mount made by root is for the services of
    /// the host (nginx's workers, a unit with `User=`), so others may use it
    /// unless `allow_root` says not; a user's own mount stays theirs unless
    /// `allow_other` says so. Whenever others may use it, the kernel checks
    /// modes unless `nodefault_permissions` says not.
    pub fn access(&self, root: bool) -> Access {
        let others = match self.allow {
            Some(Allow::Other) => true,
            Some(Allow::Root) => false,
            None => root,
        };
        // NOTE: where only root and the owner may use the mount, fuser
        // turns the others away by their LOOKUPs and OPENs, and the owner
        // is held to what the mount's token allows, not to modes.
        Access { others, default_permissions: self.default_permissions.unwrap_or(others) }
    }
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
        allow: None,
        default_permissions: None,
        attr_map: AttrMap::default(),
        local: DEFAULT_LOCAL.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(5),
        cache_dir: None,
        status_dir: None,
        token_file: None,
        ca_file: None,
        metrics_addr: None,
        log_json: false,
        passthrough: false,
    };
    for o in opts.iter().filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').map_or((o.as_str(), None), |(k, v)| (k, Some(v)));
        // NOTE: in both forms: mount(8)'s form ignores what it does not
        // know, never a known option of the wrong shape (`allow_root=1`).
        if FLAGS.contains(&k) && v.is_some() {
            return Err(format!("{o}: {k} takes no value"));
        }
        if VALUED.contains(&k) && v.is_none() {
            return Err(format!("{k} needs a value ({k}=...)"));
        }
        match (k, v) {
            ("ro", None) => inv.ro = true,
            ("rw", None) => inv.ro = false,
            ("allow_other" | "allow_root", None) => {
                let a = if k == "allow_other" { Allow::Other } else { Allow::Root };
                if inv.allow.is_some_and(|b| b != a) {
                    return Err("allow_other and allow_root exclude each other".into());
                }
                inv.allow = Some(a);
            }
            ("default_permissions", None) => inv.default_permissions = Some(true),
            ("nodefault_permissions", None) => inv.default_permissions = Some(false),
            ("passthrough", None) => inv.passthrough = true,
            ("uid", Some(v)) => inv.attr_map.uid = Some(owner_id(true, v)?),
            ("gid", Some(v)) => inv.attr_map.gid = Some(owner_id(false, v)?),
            ("umask", Some(v)) => inv.attr_map.umask = octal(k, v, 0o777)?,
            ("fmode", Some(v)) => inv.attr_map.fmode = Some(octal(k, v, 0o7777)?),
            ("dmode", Some(v)) => inv.attr_map.dmode = Some(octal(k, v, 0o7777)?),
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
            ("metrics_addr", Some(v)) => inv.metrics_addr = Some(host_port(k, v)?),
            ("log_format", Some("text")) => inv.log_json = false,
            ("log_format", Some("json")) => inv.log_json = true,
            ("log_format", Some(v)) => return Err(format!("log_format={v}: expected text or json")),
            // Generic mount options with no meaning here.
            (
                "defaults" | "auto" | "noauto" | "user" | "users" | "nouser" | "_netdev" | "nofail" | "dev" | "nodev"
                | "suid" | "nosuid" | "exec" | "noexec" | "atime" | "noatime" | "relatime" | "async",
                None,
            ) => {}
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            _ if helper => {}
            _ => return Err(format!("unknown mount option {o:?}\n\n{USAGE}")),
        }
    }
    Ok(Parsed::Run(Box::new(inv)))
}

/// The options kvfs knows that take no value.
const FLAGS: &[&str] =
    &["ro", "rw", "allow_other", "allow_root", "default_permissions", "nodefault_permissions", "passthrough"];
/// The options kvfs knows that take one.
const VALUED: &[&str] = &[
    "uid",
    "gid",
    "umask",
    "fmode",
    "dmode",
    "endpoints",
    "local",
    "timeout",
    "cache_dir",
    "status_dir",
    "token_file",
    "ca_file",
    "metrics_addr",
    "log_format",
];

/// `KEY=HOST:PORT` (a name, an IPv4 address or a bracketed IPv6 one, and a
/// port; 0 picks a free one). Whether the host resolves and the port is
/// free is for the bind at start.
fn host_port(k: &str, v: &str) -> Result<String, String> {
    let bad = || format!("{k}={v}: expected HOST:PORT, e.g. 127.0.0.1:9101 ([::1]:9101 for IPv6)");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let ipv6 = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let ok = match ipv6 {
        Some(h) => h.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'),
    };
    if !ok {
        return Err(bad());
    }
    Ok(v.to_owned())
}

/// `KEY=VALUE` as octal bits, at most `max`.
fn octal(k: &str, v: &str, max: u32) -> Result<u32, String> {
    match u32::from_str_radix(v, 8) {
        Ok(m) if m <= max => Ok(m),
        _ => Err(format!("{k}={v}: expected octal permission bits up to {max:o}")),
    }
}

/// A user (`user`) or group name or number, as this host knows it.
fn owner_id(user: bool, v: &str) -> Result<u32, String> {
    let (key, what) = if user { ("uid", "user") } else { ("gid", "group") };
    let id = match v.parse::<u32>() {
        Ok(n) => n,
        Err(_) => nss_id(user, v).ok_or_else(|| format!("{key}={v}: no such {what} on this host"))?,
    };
    // (u32::MAX is the kernel's "no id")
    if id == u32::MAX {
        return Err(format!("{key}={v}: not a {what} id"));
    }
    Ok(id)
}

/// The id of a user (or group) name through the host's name service
/// (getpwnam_r / getgrnam_r: files, LDAP, whatever nsswitch.conf says).
#[allow(unsafe_code)]
fn nss_id(user: bool, name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut size = 16 * 1024;
    loop {
        let mut buf = vec![0u8; size];
        // SAFETY: the out-structs, the buffer and the result pointer outlive
        // the calls, the buffer's length is passed with it, and the id is
        // read only when the call returned 0 and a non-null result.
        let (r, id) = unsafe {
            if user {
                let mut pw: libc::passwd = std::mem::zeroed();
                let mut out: *mut libc::passwd = std::ptr::null_mut();
                let r = libc::getpwnam_r(name.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out);
                (r, (r == 0 && !out.is_null()).then_some(pw.pw_uid))
            } else {
                let mut gr: libc::group = std::mem::zeroed();
                let mut out: *mut libc::group = std::ptr::null_mut();
                let r = libc::getgrnam_r(name.as_ptr(), &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out);
                (r, (r == 0 && !out.is_null()).then_some(gr.gr_gid))
            }
        };
        // A group with many members needs a larger buffer.
        if r == libc::ERANGE && size < 16 << 20 {
            size *= 4;
            continue;
        }
        return id;
    }
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
        assert!(i.foreground && i.ro && i.allow == Some(Allow::Other) && !i.fake);
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
    fn root_mounts_are_for_every_user_and_modes_are_checked_whenever_they_are() {
        let access =
            |o: &str, root| run(parse(&args(&format!("{o} http://h:1/a /m")), false).expect("ok")).access(root);
        let a = |others, default_permissions| Access { others, default_permissions };
        assert_eq!(access("", true), a(true, true));
        assert_eq!(access("", false), a(false, false));
        assert_eq!(access("-o allow_other", false), a(true, true));
        assert_eq!(access("-o allow_root", true), a(false, false));
        assert_eq!(access("-o allow_root,default_permissions", true), a(false, true));
        assert_eq!(access("-o nodefault_permissions", true), a(true, false));
        assert!(parse(&args("-o allow_other,allow_root http://h:1 /m"), false).is_err());
    }

    #[test]
    fn ownership_and_modes_are_mapped_by_name_or_number() {
        let map = |o: &str| parse(&args(&format!("-o {o} http://h:1/a /m")), false).map(|p| run(p).attr_map);
        let m = map("uid=root,gid=0,umask=027").expect("ok");
        assert_eq!((m.uid, m.gid, m.umask, m.fmode, m.dmode), (Some(0), Some(0), 0o27, None, None));
        let m = map("uid=1001,gid=4711,fmode=0640,dmode=2750").expect("ok");
        assert_eq!((m.uid, m.gid, m.fmode, m.dmode), (Some(1001), Some(4711), Some(0o640), Some(0o2750)));
        for bad in
            ["uid=no-such-user-here", "gid=no-such-group-here", "umask=999", "umask=1777", "fmode=rw", "dmode=17777"]
        {
            let e = map(bad).expect_err(bad);
            assert!(e.starts_with(bad.split('=').next().unwrap_or_default()), "{bad}: {e}");
        }
    }

    /// `-o o` with a source and a mount point, in kvfs's form or (`helper`)
    /// mount's.
    fn with_opts(o: &str, helper: bool) -> Result<Invocation, String> {
        let a = if helper { format!("http://h:1/a /m -o {o}") } else { format!("-o {o} http://h:1/a /m") };
        parse(&args(&a), helper).map(run)
    }

    #[test]
    fn log_format_is_text_or_json_in_both_forms() {
        for helper in [false, true] {
            let json = |o: &str| with_opts(o, helper).map(|i| i.log_json);
            assert_eq!(json("log_format=json"), Ok(true));
            assert_eq!(json("log_format=text"), Ok(false));
            for bad in ["log_format=yaml", "log_format=", "log_format"] {
                let e = json(bad).expect_err(bad);
                assert!(e.starts_with("log_format"), "{bad}: {e}");
            }
        }
    }

    #[test]
    fn passthrough_is_a_flag_in_both_forms() {
        for helper in [false, true] {
            let pt = |o: &str| with_opts(o, helper).map(|i| i.passthrough);
            assert_eq!(pt("passthrough"), Ok(true));
            assert_eq!(pt("ro"), Ok(false));
            let e = pt("passthrough=1").expect_err("passthrough=1");
            assert!(e.contains("passthrough takes no value"), "{e}");
        }
    }

    #[test]
    fn metrics_addr_takes_host_and_port_in_both_forms() {
        for helper in [false, true] {
            let addr = |o: &str| with_opts(o, helper).map(|i| i.metrics_addr);
            assert_eq!(addr("metrics_addr=127.0.0.1:0"), Ok(Some("127.0.0.1:0".into())));
            assert_eq!(addr("metrics_addr=localhost:9101"), Ok(Some("localhost:9101".into())));
            assert_eq!(addr("metrics_addr=[::1]:9101"), Ok(Some("[::1]:9101".into())));
            assert_eq!(addr("ro"), Ok(None));
            for bad in [
                "metrics_addr=nope",
                "metrics_addr=:9101",
                "metrics_addr=h:99999",
                "metrics_addr=h:x",
                "metrics_addr=::1:9101",
                "metrics_addr",
            ] {
                let e = addr(bad).expect_err(bad);
                assert!(e.starts_with("metrics_addr"), "{bad}: {e}");
            }
        }
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
