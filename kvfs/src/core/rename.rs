//! RENAME: one transaction in the cluster, one step in the cache.

use fuser::Errno;
use kv_client::{Compare, Kind, TxnOp, TxnRequest};

use super::names::{put_op, written_at};
use super::Core;
use crate::tree::{split, TreeNode};

/// How a rename treats its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameMode {
    /// `RENAME_NOREPLACE`: fail if the target exists.
    pub noreplace: bool,
    /// `RENAME_EXCHANGE`: swap the two.
    pub exchange: bool,
}

impl Core {
    /// RENAME of `name` in `parent` to `newname` in `newparent`.
    pub fn rename(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        newparent: u64,
        newname: &std::ffi::OsStr,
        mode: RenameMode,
    ) -> Result<(), Errno> {
        let src = self.child(parent, name)?;
        let dst = self.child(newparent, newname)?;
        if src == dst {
            return Ok(());
        }
        // NOTE: RENAME can arrive before RELEASE: a file created here and not
        // committed yet must exist in the cluster to be moved.
        let provisional = {
            let s = self.state()?;
            s.tree.subtree(&src).into_iter().filter(|(_, n)| n.provisional).map(|(p, _)| p).collect::<Vec<_>>()
        };
        for p in provisional {
            let ino = self.state()?.inodes.attached(&p);
            if let Some(ino) = ino {
                self.commit_all(ino)?;
            }
        }
        // The moving files' inodes (current ones and older versions held
        // open).
        let moving: Vec<(String, u64)> = {
            let s = self.state()?;
            let mut v = s.inodes.versions_under(&src);
            if mode.exchange {
                v.extend(s.inodes.versions_under(&dst));
            }
            v
        };
        // IMPORTANT: no commit of a moving file runs from here on: it would
        // put to the old name, or over a revision this rename replaces (and
        // one that ran before is in the revisions read below).
        let locks = self.writer_locks(moving.iter().map(|(_, i)| *i))?;
        let _held = locks.iter().map(|l| l.lock().map_err(|_| Errno::EIO)).collect::<Result<Vec<_>, _>>()?;
        let (src_kind, dst_kind, src_node, dst_full, src_sub, dst_sub) = {
            let s = self.state()?;
            let sk = s.tree.kind(&src).ok_or(Errno::ENOENT)?;
            (
                sk,
                s.tree.kind(&dst),
                s.tree.get(&src).cloned(),
                s.tree.has_children(&dst),
                s.tree.subtree(&src),
                s.tree.subtree(&dst),
            )
        };
        if dst.starts_with(&format!("{src}/")) {
            return Err(Errno::EINVAL);
        }
        if mode.noreplace && dst_kind.is_some() {
            return Err(Errno::EEXIST);
        }
        if mode.exchange && dst_kind.is_none() {
            return Err(Errno::ENOENT);
        }
        if !mode.exchange {
            if let Some(dk) = dst_kind {
                match (src_kind == Kind::Dir, dk == Kind::Dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if dst_full => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
            }
        }
        let dst_local_name = src_kind != Kind::Dir && self.is_local(split(&dst).1);
        let src_local = src_node.as_ref().is_some_and(|n| n.local);
        if !mode.exchange && (src_local || dst_local_name) {
            return self.rename_local(&src, &dst, src_node.ok_or(Errno::ENOENT)?, src_local, dst_local_name);
        }
        self.writable()?;
        // One transaction: the source must be as this mount saw it; the
        // target is replaced (or swapped with RENAME_EXCHANGE).
        let remote_only = |sub: &[(String, TreeNode)]| -> Vec<(String, TreeNode)> {
            sub.iter().filter(|(_, n)| !n.local && !n.provisional).cloned().collect()
        };
        let src_sub = remote_only(&src_sub);
        let dst_sub = if dst_kind.is_some() { remote_only(&dst_sub) } else { vec![] };
        let key = |p: &str| self.key(p);
        let moved = |sub: &[(String, TreeNode)], from: &str, to: &str| -> Vec<(String, TreeNode)> {
            sub.iter().map(|(p, n)| (format!("{to}{}", &p[from.len()..]), n.clone())).collect()
        };
        let mut compare: Vec<Compare> = src_sub
            .iter()
            .chain(if mode.exchange { dst_sub.iter() } else { [].iter() })
            .map(|(p, n)| Compare::key_at(key(p), n.meta.mod_revision))
            .collect();
        if mode.noreplace {
            compare.push(Compare::key_exists(key(&dst), false));
        }
        let mut success = vec![TxnOp::Delete { key: key(&src), recursive: src_kind == Kind::Dir }];
        if dst_kind.is_some() {
            success.push(TxnOp::Delete { key: key(&dst), recursive: dst_kind == Some(Kind::Dir) });
        }
        let mut arrive = moved(&src_sub, &src, &dst);
        if mode.exchange {
            arrive.extend(moved(&dst_sub, &dst, &src));
        }
        success.extend(arrive.iter().map(|(p, n)| put_op(key(p), n)));
        let txn = TxnRequest { compare, success, failure: vec![] };
        // Each moving file's revision, the one its writers edit.
        let old_rev: std::collections::HashMap<&str, u64> = src_sub
            .iter()
            .chain(if mode.exchange { dst_sub.iter() } else { [].iter() })
            .map(|(p, n)| (p.as_str(), n.meta.mod_revision))
            .collect();
        let resp = self.commits.count(match self.cluster.txn(&txn) {
            // Too big for one transaction: let mv copy and delete instead.
            Err(crate::cluster::Failure::TooLarge) => Err(Errno::EXDEV),
            Ok(r) if !r.succeeded => {
                tracing::warn!(src, dst, "rename refused: the source changed in the cluster meanwhile");
                Err(Errno::EIO)
            }
            other => other.map_err(|f| f.errno(Errno::EIO)),
        })?;
        let rev = resp.revision;
        let to_of = |p: &str| -> String {
            if p == src || p.starts_with(&format!("{src}/")) {
                format!("{dst}{}", &p[src.len()..])
            } else {
                format!("{src}{}", &p[dst.len()..])
            }
        };
        {
            let mut s = self.state_mut()?;
            // The target's files as they were, for their inodes.
            let replaced: Vec<(String, Option<TreeNode>)> = if mode.exchange {
                vec![]
            } else {
                s.inodes.attached_under(&dst).into_iter().map(|p| (p.clone(), s.tree.get(&p).cloned())).collect()
            };
            // What the watch already brought (this rename, or later changes)
            // stays.
            let known: Vec<bool> = arrive.iter().map(|(p, _)| s.tree.knows_newer(p, rev)).collect();
            for (p, _) in src_sub.iter().chain(dst_sub.iter()) {
                if !s.tree.knows_newer(p, rev) {
                    s.tree.remove_at(p, rev);
                }
            }
            for ((p, mut n), known) in arrive.into_iter().zip(known) {
                n.meta.create_revision = rev;
                n.meta.mod_revision = rev;
                n.meta.version = 1;
                written_at(&mut n.meta, resp.time_ns, false);
                if !known {
                    s.tree.insert(p, n);
                }
            }
            self.show_touched(&mut s, &crate::cluster::Written::of(&resp));
            // IMPORTANT: the replaced target's inodes are detached, not
            // forgotten: a reader holding the old file goes on reading it (a
            // file created here and not committed yet included).
            if mode.exchange {
                let tmp = format!("\0exchange\0{src}");
                s.inodes.rename(&src, &tmp);
                s.inodes.rename(&dst, &src);
                s.inodes.rename(&tmp, &dst);
            } else {
                for (p, n) in replaced {
                    if s.tree.get(&p).is_some_and(|n| n.provisional) {
                        s.tree.remove(&p);
                    }
                    s.inodes.detach(&p, n, true);
                }
                s.inodes.rename(&src, &dst);
            }
            for (p, ino) in &moving {
                self.own_version(&mut s, *ino, &to_of(p), rev);
            }
        }
        // Files with pending writes keep them: their content moved unchanged.
        for (p, ino) in &moving {
            if let Some(from) = old_rev.get(p.as_str()) {
                self.rebase(*ino, *from, rev, None);
            }
        }
        self.changed();
        Ok(())
    }

    /// Renames where one side is a local scratch name: local to local moves
    /// here only; local onto a real name commits the content; a real file
    /// onto a scratch name moves its content here and deletes the key.
    fn rename_local(
        &self,
        src: &str,
        dst: &str,
        node: TreeNode,
        src_local: bool,
        dst_local: bool,
    ) -> Result<(), Errno> {
        let mut n = node;
        // The file's inode, which the kernel moves to the new name.
        let ino = self.state()?.inodes.attached(src);
        let mut put = None;
        if src_local && !dst_local {
            self.writable()?;
            let op = put_op(self.key(dst), &n);
            let resp = self.commits.count(
                self.cluster
                    .txn(&TxnRequest { success: vec![op], ..Default::default() })
                    .map_err(|f| f.errno(Errno::EIO)),
            )?;
            n.local = false;
            n.meta.mod_revision = resp.revision;
            n.meta.create_revision = resp.revision;
            n.meta.version = 1;
            written_at(&mut n.meta, resp.time_ns, false);
            put = Some(crate::cluster::Written::of(&resp));
        }
        let deleted = if !src_local {
            n.local = true;
            Some(self.delete_key(src)?)
        } else {
            None
        };
        let mut s = self.state_mut()?;
        match &deleted {
            Some(Some(w)) => s.tree.remove_at(src, w.revision),
            _ => s.tree.remove(src),
        };
        let old_dst = s.tree.get(dst).cloned();
        for w in put.iter().chain(deleted.iter().flatten()) {
            self.show_touched(&mut s, w);
        }
        s.tree.insert(dst.to_owned(), n);
        s.inodes.detach(dst, old_dst, true);
        s.inodes.rename(src, dst);
        // IMPORTANT: the watch may have brought the delete of the old key
        // first, and taken the inode for a deleted file's: writes through
        // it would go nowhere.
        if let Some(ino) = ino {
            s.inodes.reattach(ino, dst);
        }
        drop(s);
        self.changed();
        Ok(())
    }
}
