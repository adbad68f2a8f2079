//! Man pages generated from clap definitions, checked against the committed
//! ones so they never drift from `--help`.

use std::path::Path;

/// Date shown in the pages' footers (the release's).
const MAN_DATE: &str = "2026-11-22";

/// The sections of a page that clap does not know: roff text of each.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sections<'a> {
    /// EXIT STATUS: what each exit code means.
    pub exit_status: &'a str,
    /// ENVIRONMENT: the variables the program reads.
    pub environment: &'a str,
    /// SIGNALS, for daemons.
    pub signals: &'a str,
    /// SEE ALSO: pages as `name(section)`.
    pub see_also: &'a [&'a str],
}

/// Renders `cmd` as a man page of `section` with the `extra` sections and
/// compares it with the file `path`; with `UPDATE_MAN` set in the
/// environment it rewrites the file.
pub fn check_man_page(cmd: clap::Command, section: &str, path: &str, extra: &Sections) {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).section(section).date(MAN_DATE).render(&mut out).expect("render the man page");
    let man_dir = Path::new(path).parent().expect("the page's directory");
    let out = add_sections(&existing_refs(&lint_clean(&out), man_dir), extra);
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(path, &out).expect("write man page");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(committed == out, "{path} is out of date: rerun this test with UPDATE_MAN=1");
}

/// clap_mangen writes a blank line (a paragraph break) between `.br`
/// requests in long help; mandoc -T lint warns about it.
fn lint_clean(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let mut lines: Vec<&str> = Vec::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        if !(l == ".br" && lines.last() == Some(&".br")) {
            lines.push(l);
        }
    }
    lines.join("\n") + "\n"
}

/// clap_mangen names a page per subcommand (`kvctl\-get(1)`) in the
/// SUBCOMMANDS section; the ones that do not exist in `man_dir` become the
/// command line itself (`kvctl get`), whose `--help` has the options.
fn existing_refs(page: &str, man_dir: &Path) -> String {
    let mut out = String::with_capacity(page.len());
    for line in page.lines() {
        match page_ref(line) {
            Some((name, sect)) if !man_dir.join(format!("{name}.{sect}")).exists() => {
                out.push_str(&format!("\\fB{}\\fR", name.replace('-', " ")));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `kvctl\-get(1)` as ("kvctl-get", "1"), for a line that is only that.
fn page_ref(line: &str) -> Option<(String, &str)> {
    let (name, rest) = line.split_once('(')?;
    let sect = rest.strip_suffix(')')?;
    let name = name.replace("\\-", "-");
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    (!name.is_empty() && name.chars().all(plain) && !sect.is_empty() && sect.chars().all(|c| c.is_ascii_digit()))
        .then_some((name, sect))
}

/// Puts EXIT STATUS, ENVIRONMENT, SIGNALS and SEE ALSO before the VERSION
/// section (or at the end).
fn add_sections(page: &str, s: &Sections) -> String {
    let mut extra = String::new();
    for (title, body) in [("EXIT STATUS", s.exit_status), ("ENVIRONMENT", s.environment), ("SIGNALS", s.signals)] {
        if !body.is_empty() {
            extra.push_str(&format!(".SH \"{title}\"\n{}\n", body.trim_end()));
        }
    }
    if !s.see_also.is_empty() {
        extra.push_str(".SH \"SEE ALSO\"\n");
        for (i, r) in s.see_also.iter().enumerate() {
            let (name, sect) = r.trim_end_matches(')').split_once('(').expect("see_also entries are name(section)");
            let comma = if i + 1 < s.see_also.len() { "," } else { "" };
            extra.push_str(&format!(".BR {} ({sect}){comma}\n", name.replace('-', "\\-")));
        }
    }
    match page.find(".SH VERSION") {
        Some(at) => format!("{}{extra}{}", &page[..at], &page[at..]),
        None => format!("{page}{extra}"),
    }
}

/// Every `name(section)` a page under `man_dir` refers to.
pub fn page_refs(man_dir: &Path) -> Vec<(String, String, String)> {
    let mut refs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(man_dir).expect("man dir").flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let Some(ext) = f.extension().and_then(|e| e.to_str()) else { continue };
        if !ext.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let text =
            std::fs::read_to_string(&f).expect("read page").replace("\\-", "-").replace("\\fB", "").replace("\\fR", "");
        let page = f.file_name().expect("name").to_string_lossy().into_owned();
        // `.BR name (N)` and `name(N)` in running text.
        let words = text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()).collect::<Vec<_>>();
        for (i, w) in words.iter().enumerate() {
            let (name, rest) = match w.strip_prefix('(') {
                Some(rest) if i > 0 => (words[i - 1], rest),
                Some(_) => continue,
                None => match w.split_once('(') {
                    Some(pair) => pair,
                    None => continue,
                },
            };
            let name = name.trim_start_matches(['"', '`', '\'']);
            let Some((sect, _)) = rest.split_once(')') else { continue };
            let plain = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
            if name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(plain)
                && sect.len() == 1
                && sect.chars().all(|c| c.is_ascii_digit())
            {
                refs.push((page.clone(), name.to_owned(), sect.to_owned()));
            }
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_subcommand_pages_become_command_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kvctl-watch.1"), "").expect("write");
        let page = ".SH SUBCOMMANDS\n.TP\nkvctl\\-get(1)\nPrint a key\n.TP\nkvctl\\-watch(1)\nWatch\n.TP\nkvctl\\-member\\-add(1)\nAdd\n";
        let out = existing_refs(page, dir.path());
        assert!(out.contains("\\fBkvctl get\\fR\n"), "{out}");
        assert!(out.contains("kvctl\\-watch(1)\n"), "{out}");
        assert!(out.contains("\\fBkvctl member add\\fR\n"), "{out}");
    }

    #[test]
    fn sections_go_before_version() {
        let s = Sections {
            exit_status: ".TP\n.B 0\nok",
            environment: "",
            signals: "",
            see_also: &["kvd(8)", "kvctl-watch(1)"],
        };
        let out = add_sections(".TH X 1\n.SH NAME\nx\n.SH VERSION\nv1\n", &s);
        assert_eq!(
            out,
            ".TH X 1\n.SH NAME\nx\n.SH \"EXIT STATUS\"\n.TP\n.B 0\nok\n.SH \"SEE ALSO\"\n.BR kvd (8),\n.BR kvctl\\-watch (1)\n.SH VERSION\nv1\n"
        );
    }

    #[test]
    fn page_refs_finds_both_spellings() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.1"), "see\n.BR kvd (8),\nand fstab(5) or kvctl\\-watch(1).\n")
            .expect("write");
        let refs: Vec<_> = page_refs(dir.path()).into_iter().map(|(_, n, s)| format!("{n}({s})")).collect();
        assert_eq!(refs, ["kvd(8)", "fstab(5)", "kvctl-watch(1)"]);
    }
}
