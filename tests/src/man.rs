//! Man pages generated from clap definitions, checked against the committed
//! ones so they never drift from `--help`.

/// Date shown in the pages' footers (the release's).
const MAN_DATE: &str = "2026-11-22";

/// Renders `cmd` as a man page of `section` and compares it with the file
/// `path`; with `UPDATE_MAN` set in the environment it rewrites the file.
pub fn check_man_page(cmd: clap::Command, section: &str, path: &str) {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).section(section).date(MAN_DATE).render(&mut out).expect("render the man page");
    let out = lint_clean(&out);
    if std::env::var_os("UPDATE_MAN").is_some() {
        std::fs::write(path, &out).expect("write man page");
    }
    let committed = std::fs::read(path).unwrap_or_default();
    assert!(committed == out, "{path} is out of date: rerun this test with UPDATE_MAN=1");
}

/// clap_mangen writes a blank line (a paragraph break) between `.br`
/// requests in long help; mandoc -T lint warns about it.
fn lint_clean(out: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(out);
    let mut lines: Vec<&str> = Vec::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        if !(l == ".br" && lines.last() == Some(&".br")) {
            lines.push(l);
        }
    }
    (lines.join("\n") + "\n").into_bytes()
}
