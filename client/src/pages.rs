//! Walking a paged listing to its end: the stop condition and the cursor,
//! once, for async callers ([`crate::Client::list_all`]) and for callers
//! that fetch pages their own way ([`pages`]).

use crate::types::ListResponse;

/// A page of a paged listing.
pub trait Paged {
    /// Where the next page starts (the `after` to ask it with); `None` on
    /// the last page.
    fn next_cursor(&self) -> Option<&str>;
}

impl Paged for ListResponse {
    fn next_cursor(&self) -> Option<&str> {
        // NOTE: `more` says whether a next page exists; `next_after` alone does not.
        if self.more {
            self.next_after.as_deref()
        } else {
            None
        }
    }
}

/// Where a walk through a paged listing stands: the `after` of the page to
/// fetch next, until the last page came.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    after: Option<String>,
    done: bool,
}

impl Cursor {
    /// A walk from the start of the listing (`None`) or after `after`.
    pub fn new(after: Option<String>) -> Cursor {
        Cursor { after, done: false }
    }

    /// Whether a page is still to be fetched.
    pub fn pending(&self) -> bool {
        !self.done
    }

    /// The `after` to fetch the next page with.
    pub fn after(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// Moves past `page`, the one fetched with [`Cursor::after`].
    pub fn advance(&mut self, page: &impl Paged) {
        self.after = page.next_cursor().map(str::to_owned);
        self.done = self.after.is_none();
    }
}

/// The pages of a listing, each fetched by `fetch(after)` (`None` for the
/// first), until the last one or the first error.
pub fn pages<P, E, F>(fetch: F) -> Pages<F>
where
    P: Paged,
    F: FnMut(Option<&str>) -> Result<P, E>,
{
    Pages { fetch, cursor: Cursor::new(None) }
}

/// Iterator of [`pages`].
#[derive(Debug)]
pub struct Pages<F> {
    fetch: F,
    cursor: Cursor,
}

impl<P, E, F> Iterator for Pages<F>
where
    P: Paged,
    F: FnMut(Option<&str>) -> Result<P, E>,
{
    type Item = Result<P, E>;

    fn next(&mut self) -> Option<Result<P, E>> {
        if !self.cursor.pending() {
            return None;
        }
        let page = (self.fetch)(self.cursor.after());
        match &page {
            Ok(p) => self.cursor.advance(p),
            Err(_) => self.cursor = Cursor { after: None, done: true },
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of `keys` served `limit` at a time, recording each `after`
    /// it was asked with.
    fn serve(keys: &[&str], limit: usize, asked: &mut Vec<Option<String>>, after: Option<&str>) -> ListResponse {
        asked.push(after.map(str::to_owned));
        let start = after.map_or(0, |a| keys.iter().position(|k| *k == a).map_or(keys.len(), |i| i + 1));
        let page: Vec<&str> = keys[start..].iter().take(limit).copied().collect();
        let more = start + page.len() < keys.len();
        let meta = crate::Meta {
            kind: crate::Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            size: 0,
            atime_ns: None,
            ctime_ns: None,
        };
        ListResponse {
            revision: 10 + asked.len() as u64,
            entries: page.iter().map(|k| crate::EntryInfo::new((*k).to_owned(), meta.clone(), None)).collect(),
            more,
            next_after: more.then(|| page.last().map(|k| (*k).to_owned())).flatten(),
        }
    }

    #[test]
    fn pages_follow_the_cursor_to_the_last_page() {
        let keys = ["a", "b", "c", "d", "e"];
        for limit in [1, 2, 4, 5, 9] {
            let mut asked = Vec::new();
            let got: Vec<String> = pages(|after| Ok::<_, ()>(serve(&keys, limit, &mut asked, after)))
                .flat_map(|p| p.expect("a page").entries)
                .map(|e| e.key)
                .collect();
            assert_eq!(got, keys, "limit {limit}");
            assert_eq!(asked.len(), keys.len().div_ceil(limit).max(1), "limit {limit}: {asked:?}");
            assert_eq!(asked[0], None, "the first page is asked from the start");
            for (n, a) in asked.iter().enumerate().skip(1) {
                assert_eq!(a.as_deref(), Some(keys[n * limit - 1]), "limit {limit}: page {n}");
            }
        }
    }

    #[test]
    fn a_page_without_more_ends_the_walk_whatever_its_next_after() {
        let page = |more, next: Option<&str>| ListResponse {
            revision: 1,
            entries: Vec::new(),
            more,
            next_after: next.map(str::to_owned),
        };
        assert_eq!(page(false, Some("x")).next_cursor(), None);
        assert_eq!(page(true, None).next_cursor(), None, "more without a cursor cannot go on");
        assert_eq!(page(true, Some("x")).next_cursor(), Some("x"));
        let mut calls = 0;
        let n = pages(|_| {
            calls += 1;
            Ok::<_, ()>(page(false, Some("x")))
        })
        .count();
        assert_eq!((n, calls), (1, 1));
    }

    #[test]
    fn an_error_ends_the_walk() {
        let mut calls = 0;
        let got: Vec<Result<ListResponse, &str>> = pages(|after| {
            calls += 1;
            match after {
                None => Ok(ListResponse { revision: 1, entries: Vec::new(), more: true, next_after: Some("k".into()) }),
                Some(_) => Err("down"),
            }
        })
        .collect();
        assert_eq!(calls, 2);
        assert!(matches!(got.as_slice(), [Ok(_), Err("down")]));
    }

    #[test]
    fn a_cursor_starts_where_it_is_told() {
        let mut c = Cursor::new(Some("m".into()));
        assert!(c.pending());
        assert_eq!(c.after(), Some("m"));
        c.advance(&ListResponse { revision: 1, entries: Vec::new(), more: false, next_after: None });
        assert!(!c.pending());
    }
}
