// kv's web UI: browse, edit with compare-and-set, history, cluster health.
// Plain DOM, no framework; every value is put in the page as text, never as
// HTML. It talks to the client API of the member that serves it, with the
// token kept in this tab's sessionStorage (sent as a bearer token; no
// cookies).
'use strict';

const TOKEN = 'kv-token';
const view = () => document.getElementById('view');
let who = { mode: 'none', name: null, grants: { read: [''], write: [''], admin: false } };
let liveStream = null;
let clusterTimer = null;

// ---- DOM ----------------------------------------------------------------

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

function show(...nodes) {
  const v = view();
  v.replaceChildren(...nodes);
}

// A message stays for the page its action leads to, and goes with the next.
let routes = 0;
let shownAt = 0;

function message(text, kind) {
  shownAt = routes;
  const m = document.getElementById('message');
  if (!text) { m.hidden = true; m.textContent = ''; return; }
  m.hidden = false;
  m.className = kind || '';
  m.textContent = text;
}

// ---- API ----------------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN) || ''; }

function encKey(k) { return k.split('/').map(encodeURIComponent).join('/'); }

async function api(path, opts) {
  const o = Object.assign({ cache: 'no-store' }, opts || {});
  o.headers = Object.assign({}, o.headers || {});
  if (token()) o.headers.Authorization = 'Bearer ' + token();
  return fetch(path, o);
}

async function failure(r) {
  let body = {};
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  const e = new Error((body.message || r.statusText || 'request failed') + ` (${body.error || 'HTTP'} ${r.status})`);
  e.status = r.status;
  e.code = body.error;
  return e;
}

async function json(path) {
  const r = await api(path);
  if (!r.ok) throw await failure(r);
  return r.json();
}

// ---- who may do what ----------------------------------------------------

// A grant covers a key by whole path segments, as the server checks it.
function covers(prefixes, key) {
  return (prefixes || []).some((p) => p === '' || key === p.replace(/\/$/, '') || key.startsWith(p.endsWith('/') ? p : p + '/'));
}

// A key or prefix the server would take: no empty, `.` or `..` segment
// (a browser would resolve those in the URL and reach another key).
function validKey(k, prefix) {
  const parts = (prefix ? k.replace(/\/$/, '') : k).split('/');
  if (prefix && k === '') return true;
  return parts.every((p) => p !== '' && p !== '.' && p !== '..');
}
function canWrite(key) { return who.grants.admin || covers(who.grants.write, key); }

async function loadWho() {
  try {
    who = await json('/v1/auth/whoami');
  } catch (e) {
    if (e.status === 401) {
      who = { mode: 'all', name: null, grants: { read: [], write: [], admin: false } };
    } else throw e;
  }
  const name = who.name ? `token ${who.name}` : 'no token';
  document.getElementById('whoami').textContent = `${name} · auth ${who.mode}`;
  document.getElementById('token-forget').disabled = !token();
}

async function loadMember() {
  try {
    const s = await json('/v1/status');
    const lead = s.leader === s.id ? 'leader' : (s.leader ? `follower of ${s.leader}` : 'no leader');
    document.getElementById('member').textContent = `member ${s.id} (${lead}, term ${s.term})`;
  } catch (_) {
    document.getElementById('member').textContent = '';
  }
}

// ---- formatting ---------------------------------------------------------

function octal(m) { return (m || 0).toString(8).padStart(4, '0'); }
function when(ns) { return ns ? new Date(Number(ns) / 1e6).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : ''; }
function baseName(key, prefix) { return key.slice(prefix.length); }

// The bytes as text when they are UTF-8 without NULs (a BOM kept), else null.
function textOf(bytes) {
  if (bytes.includes(0)) return null;
  try { return new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes); } catch (_) { return null; }
}

function hexDump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const row = bytes.slice(i, i + 16);
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, '0')).join(' ');
    const asc = Array.from(row, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${i.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${asc}`);
  }
  return lines.join('\n');
}

// A small highlighter for the config languages, by file name: it marks
// comments, sections, keys, strings and numbers, nothing more.
function language(key) {
  const m = /\.([a-z]+)$/i.exec(key);
  const ext = m ? m[1].toLowerCase() : '';
  return { toml: 'ini', ini: 'ini', conf: 'ini', cfg: 'ini', yaml: 'yaml', yml: 'yaml', json: 'json' }[ext] || '';
}

function span(cls, text) { return el('span', { class: cls, text }); }

function valueNodes(line) {
  const v = line.trim();
  if (/^(".*"|'.*')$/.test(v)) return [span('hl-str', line)];
  if (/^-?\d+(\.\d+)?$/.test(v) || /^(true|false|null)$/.test(v)) return [span('hl-num', line)];
  return [line];
}

function highlightLine(lang, line) {
  if (lang === 'json') {
    const out = [];
    const re = /("(?:[^"\\]|\\.)*")(\s*:)?|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/g;
    let at = 0;
    for (let m; (m = re.exec(line));) {
      out.push(line.slice(at, m.index));
      if (m[1]) out.push(span(m[2] ? 'hl-key' : 'hl-str', m[1]), m[2] || '');
      else out.push(span('hl-num', m[3]));
      at = re.lastIndex;
    }
    out.push(line.slice(at));
    return out;
  }
  if (/^\s*[#;]/.test(line) || (lang === 'yaml' && /^\s*#/.test(line))) return [span('hl-com', line)];
  if (lang === 'ini' && /^\s*\[.*\]\s*$/.test(line)) return [span('hl-sec', line)];
  const sep = lang === 'yaml' ? /^(\s*-?\s*[^:#\s][^:#]*?)(:)(\s.*|$)/ : /^(\s*[^=#;\s][^=]*?)(\s*=)(.*)$/;
  const m = sep.exec(line);
  if (m) return [span('hl-key', m[1]), m[2], ...valueNodes(m[3])];
  return [line];
}

function highlighted(key, text, id) {
  const lang = language(key);
  const pre = el('pre', { id, 'data-lang': lang || 'text' });
  if (!lang) { pre.textContent = text; return pre; }
  text.split('\n').forEach((line, i, all) => {
    pre.append(...highlightLine(lang, line));
    if (i < all.length - 1) pre.append('\n');
  });
  return pre;
}

// Lines of `a` and `b` as a unified diff (longest common subsequence).
function diffLines(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  const n = x.length;
  const m = y.length;
  const l = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) l[i][j] = x[i] === y[j] ? l[i + 1][j + 1] + 1 : Math.max(l[i + 1][j], l[i][j + 1]);
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push(['same', '  ' + x[i]]); i++; j++; }
    else if (i < n && (j === m || l[i + 1][j] >= l[i][j + 1])) { out.push(['del', '- ' + x[i]]); i++; }
    else { out.push(['add', '+ ' + y[j]]); j++; }
  }
  return out;
}

function diffView(id, a, b) {
  const pre = el('pre', { id, class: 'diff' });
  for (const [kind, line] of diffLines(a, b)) pre.append(el('span', { class: kind, text: line }));
  return pre;
}

// ---- pages --------------------------------------------------------------

function crumbs(prefix, base) {
  const parts = prefix.split('/').filter(Boolean);
  const nodes = [el('a', { href: `#/${base}/`, text: '(root)' })];
  let p = '';
  for (const part of parts) {
    p += part + '/';
    nodes.push(' / ', el('a', { href: `#/${base}/${encKey(p)}`, text: part }));
  }
  return el('p', { class: 'crumbs' }, nodes);
}

async function browse(prefix) {
  const list = await json(`/v1/list/${encKey(prefix)}?limit=1000`);
  const filter = el('input', { id: 'filter', type: 'search', placeholder: 'filter keys below here', 'aria-label': 'filter' });
  const table = el('table', { id: 'tree' });
  const writable = canWrite(prefix);
  const render = async () => {
    const q = filter.value.trim();
    let entries = list.entries;
    if (q) {
      const all = await json(`/v1/list/${encKey(prefix)}?recursive=true&limit=1000`);
      entries = all.entries.filter((e) => e.key.slice(prefix.length).includes(q));
    }
    table.replaceChildren(el('tr', {}, el('th', { text: 'name' }), el('th', { text: 'kind' }), el('th', { text: 'mode' }),
      el('th', { class: 'num', text: 'size' }), el('th', { class: 'num', text: 'revision' })));
    for (const e of entries) {
      const name = baseName(e.key, prefix);
      const href = e.kind === 'dir' ? `#/browse/${encKey(e.key)}/` : `#/key/${encKey(e.key)}`;
      table.append(el('tr', { class: 'entry', 'data-key': e.key, 'data-kind': e.kind },
        el('td', {}, el('a', { class: 'key-link', href, text: e.kind === 'dir' ? name + '/' : name })),
        el('td', { text: e.kind }), el('td', { text: e.kind === 'dir' && !e.mod_revision ? '' : octal(e.mode) }),
        el('td', { class: 'num', text: e.kind === 'file' ? String(e.size) : '' }),
        el('td', { class: 'num', text: e.mod_revision ? String(e.mod_revision) : '' })));
    }
    if (!entries.length) table.append(el('tr', {}, el('td', { colspan: 5, class: 'muted', text: q ? 'nothing matches' : 'empty' })));
  };
  filter.addEventListener('input', () => render().catch(fail));
  const name = el('input', { id: 'new-name', type: 'text', placeholder: 'new name', 'aria-label': 'new name', disabled: !writable });
  const create = async (dir) => {
    const n = name.value.trim().replace(/^\/+|\/+$/g, '');
    if (!n) return message('give the new entry a name');
    const key = prefix + n;
    if (!validKey(key)) return message(`${key}: a name may not have empty, "." or ".." parts`);
    const headers = { 'If-None-Match': '*' };
    if (dir) headers['x-kv-kind'] = 'dir';
    const r = await api(`/v1/kv/${encKey(key)}`, { method: 'PUT', headers, body: '' });
    if (r.status === 412) return message(`${key} exists already`);
    if (!r.ok) throw await failure(r);
    message(`created ${key}`, 'info');
    location.hash = dir ? `#/browse/${encKey(key)}/` : `#/key/${encKey(key)}`;
  };
  const tools = el('div', { class: 'toolbar' }, filter, name,
    el('button', { id: 'new-file', disabled: !writable, onclick: () => create(false).catch(fail) }, 'New file'),
    el('button', { id: 'new-dir', disabled: !writable, onclick: () => create(true).catch(fail) }, 'New directory'));
  if (prefix) {
    const really = el('button', { id: 'delete-dir-confirm', hidden: true, onclick: () => deleteDir(prefix, list.revision).catch(fail) }, `Really delete ${prefix} and everything in it`);
    tools.append(el('button', { id: 'delete-dir', disabled: !writable, onclick: () => { really.hidden = false; } }, 'Delete directory'), really);
  }
  if (!writable) tools.append(el('span', { class: 'muted', id: 'read-only', text: 'read-only for this token' }));
  show(el('h2', { text: `Keys under ${prefix || '(root)'}` }), crumbs(prefix, 'browse'), tools, table,
    el('p', { class: 'muted', text: `revision ${list.revision}${list.more ? ' · more than 1000 entries: use the filter' : ''}` }));
  await render();
}

// Deletes the directory and everything below it, only if nothing there
// changed after the listing the user saw (revision `seen`).
async function deleteDir(prefix, seen) {
  const dir = prefix.replace(/\/$/, '');
  if (!dir || !validKey(dir)) throw new Error(`will not delete ${JSON.stringify(prefix)}`);
  const body = JSON.stringify({
    compare: [{ prefix: dir, unchanged_since: seen }],
    success: [{ op: 'delete', key: dir, recursive: true }],
  });
  const r = await api('/v1/txn', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
  if (!r.ok && r.status !== 412) throw await failure(r);
  const out = r.ok ? await r.json() : { succeeded: false };
  if (!out.succeeded) {
    message(`${prefix} changed after it was listed; nothing was deleted`);
    return route();
  }
  message(`deleted ${prefix}`, 'info');
  const up = prefix.replace(/[^/]+\/$/, '');
  location.hash = `#/browse/${encKey(up)}`;
}

async function readKey(key, rev) {
  const r = await api(`/v1/kv/${encKey(key)}${rev ? `?rev=${rev}` : ''}`);
  if (r.status === 404) return null;
  if (!r.ok) throw await failure(r);
  const bytes = new Uint8Array(await r.arrayBuffer());
  const h = (n) => r.headers.get(n);
  return {
    bytes, text: textOf(bytes),
    kind: h('x-kv-kind') || 'file', mode: parseInt(h('x-kv-mode') || '0', 8),
    modRevision: Number(h('x-kv-mod-revision') || 0), version: Number(h('x-kv-version') || 0),
    mtime: h('last-modified') || '',
  };
}

// PUT `text` to `key` if it is still at revision `base`. On a conflict,
// shows both versions and never writes.
// `body` is text or bytes; `retry(base)`, when given, is what "mine over
// theirs" does (a restore); without it the open editor takes the new base.
async function saveIfUnchanged(key, body, base, area, retry) {
  const r = await api(`/v1/kv/${encKey(key)}`, { method: 'PUT', headers: { 'If-Match': `"${base}"` }, body });
  if (r.status === 412) {
    const theirs = await readKey(key);
    const mine = typeof body === 'string' ? body : (textOf(body) ?? hexDump(body));
    conflict(key, mine, theirs, area, retry);
    return false;
  }
  if (!r.ok) throw await failure(r);
  return true;
}

function conflict(key, mine, theirs, area, retry) {
  const theirText = theirs ? (theirs.text ?? hexDump(theirs.bytes)) : '(deleted)';
  const base = theirs ? theirs.modRevision : 0;
  const keepMine = retry
    ? el('button', { id: 'conflict-keep-mine', onclick: () => { box.remove(); retry(base).catch(fail); } }, 'Write this version over theirs')
    : el('button', { id: 'conflict-keep-mine', onclick: () => { area.dataset.base = String(base); box.remove(); message('editing yours on top of theirs: save again to replace theirs', 'info'); } }, 'Edit mine on top of theirs');
  const box = el('div', { id: 'conflict', class: 'conflict' },
    el('h3', { text: `Conflict: ${key} changed since you opened it (now revision ${theirs ? theirs.modRevision : 'deleted'})` }),
    el('p', { text: 'Nothing was written. Both versions:' }),
    el('div', { class: 'sides' },
      el('div', {}, el('h4', { text: 'yours (not saved)' }), el('pre', { id: 'conflict-mine', text: mine })),
      el('div', {}, el('h4', { text: 'theirs (saved)' }), el('pre', { id: 'conflict-theirs', text: theirText }))),
    el('h4', { text: 'what yours would change in theirs' }), diffView('conflict-diff', theirText, mine),
    el('div', { class: 'toolbar' },
      keepMine,
      el('button', { id: 'conflict-take-theirs', onclick: () => route() }, 'Discard mine, show theirs')));
  const old = document.getElementById('conflict');
  if (old) old.remove();
  area.before(box);
  message(`conflict: ${key} was changed by someone else; nothing was written`);
}

async function keyPage(key) {
  const v = await readKey(key);
  const parent = key.includes('/') ? key.replace(/[^/]*$/, '') : '';
  if (!v) {
    show(el('h2', { text: key }), crumbs(parent, 'browse'), el('p', { id: 'missing', text: 'No such key (it may have been deleted).' }), await historyBox(key, null));
    return;
  }
  const writable = canWrite(key) && v.kind !== 'dir' && v.text !== null;
  const meta = el('table', { id: 'meta' },
    ...[['kind', v.kind], ['mode', octal(v.mode)], ['size', String(v.bytes.length)], ['revision', String(v.modRevision)],
      ['version', String(v.version)], ['modified', v.mtime]].map(([k, x]) => el('tr', {}, el('th', { text: k }), el('td', { id: `meta-${k}`, text: x }))));
  const body = v.kind === 'dir' ? el('p', { class: 'muted', text: 'a directory' })
    : v.text !== null ? highlighted(key, v.text, 'value') : el('pre', { id: 'hex', text: hexDump(v.bytes) });
  const area = el('div', { id: 'edit-area', 'data-base': String(v.modRevision) });
  const edit = el('button', { id: 'edit', disabled: !writable, onclick: () => {
    const editor = el('textarea', { id: 'editor', spellcheck: 'false' });
    editor.value = v.text;
    // A textarea gives its lines back with LF; a file with CRLF keeps them.
    editor.dataset.crlf = v.text.includes('\r\n') ? '1' : '';
    area.replaceChildren(editor, el('div', { class: 'toolbar' },
      el('button', { id: 'save', onclick: () => save(key, editor, area).catch(fail) }, 'Save'),
      el('button', { id: 'cancel', onclick: () => route() }, 'Cancel'),
      el('span', { class: 'muted', text: 'saved only if nobody changed it since it was shown' })));
    body.hidden = true;
    edit.disabled = true;
  } }, 'Edit');
  const really = el('button', { id: 'delete-confirm', hidden: true, onclick: () => deleteKey(key, v.modRevision).catch(fail) }, `Really delete ${key}`);
  const del = el('button', { id: 'delete', disabled: !canWrite(key), onclick: () => { really.hidden = false; } }, 'Delete');
  show(el('h2', { text: key }), crumbs(parent, 'browse'), meta, el('div', { class: 'toolbar' }, edit, del, really,
    canWrite(key) ? null : el('span', { class: 'muted', id: 'read-only', text: 'read-only for this token' })), body, area, await historyBox(key, v));
}

async function save(key, editor, area) {
  const text = editor.dataset.crlf ? editor.value.replace(/\r?\n/g, '\r\n') : editor.value;
  const ok = await saveIfUnchanged(key, text, Number(area.dataset.base), area);
  if (ok) { message(`saved ${key}`, 'info'); await route(); }
}

async function deleteKey(key, rev) {
  const r = await api(`/v1/kv/${encKey(key)}`, { method: 'DELETE', headers: { 'If-Match': `"${rev}"` } });
  if (r.status === 412) { message(`${key} changed since it was shown; nothing was deleted`); return route(); }
  if (!r.ok) throw await failure(r);
  message(`deleted ${key}`, 'info');
  location.hash = `#/browse/${encKey(key.replace(/[^/]*$/, ''))}`;
}

async function historyBox(key, current) {
  let h;
  try { h = await json(`/v1/history/${encKey(key)}`); } catch (e) { return el('p', { class: 'muted', text: `no history: ${e.message}` }); }
  const table = el('table', { id: 'history' }, el('tr', {}, el('th', { text: 'A' }), el('th', { text: 'B' }), el('th', { class: 'num', text: 'revision' }),
    el('th', { text: 'time' }), el('th', { text: 'writer' }), el('th', { text: 'change' }), el('th', {})));
  h.versions.forEach((ver, i) => {
    const restore = current && !ver.deleted && ver.revision !== current.modRevision && canWrite(key) && current.kind !== 'dir'
      ? el('button', { class: 'restore', 'data-rev': String(ver.revision), onclick: () => restoreVersion(key, ver.revision, current.modRevision).catch(fail) }, 'Restore this version')
      : null;
    table.append(el('tr', { class: 'version', 'data-rev': String(ver.revision) },
      el('td', {}, ver.deleted ? null : el('input', { type: 'radio', name: 'diff-a', value: String(ver.revision), checked: i === 1 || (h.versions.length === 1 && i === 0) })),
      el('td', {}, ver.deleted ? null : el('input', { type: 'radio', name: 'diff-b', value: String(ver.revision), checked: i === 0 })),
      el('td', { class: 'num', text: String(ver.revision) }), el('td', { text: when(ver.time_ns) }),
      el('td', { class: 'writer', text: ver.writer || '' }), el('td', { text: ver.deleted ? 'deleted' : `${ver.meta ? ver.meta.kind : ''} ${ver.meta ? ver.meta.size + ' bytes' : ''}` }),
      el('td', {}, restore)));
  });
  const out = el('div', { id: 'diff-out' });
  const compare = el('button', { id: 'compare', onclick: () => showDiff(key, out).catch(fail) }, 'Diff A → B');
  return el('section', {}, el('h3', { text: 'History' }),
    el('p', { class: 'muted', text: h.compact ? `versions before revision ${h.compact} are no longer kept` : '' }), table, compare, out);
}

async function showDiff(key, out) {
  const a = document.querySelector('input[name=diff-a]:checked');
  const b = document.querySelector('input[name=diff-b]:checked');
  if (!a || !b) return message('pick two versions (A and B)');
  const [va, vb] = await Promise.all([readKey(key, a.value), readKey(key, b.value)]);
  const ta = va ? (va.text ?? hexDump(va.bytes)) : '';
  const tb = vb ? (vb.text ?? hexDump(vb.bytes)) : '';
  out.replaceChildren(el('h4', { text: `revision ${a.value} → ${b.value}` }), diffView('diff', ta, tb));
}

async function restoreVersion(key, rev, base) {
  const old = await readKey(key, rev);
  if (!old) throw new Error(`revision ${rev} of ${key} is no longer kept`);
  const area = document.getElementById('edit-area');
  // The version's bytes as they were (binary ones included).
  if (await saveIfUnchanged(key, old.bytes, base, area, (theirs) => restoreVersion(key, rev, theirs))) {
    message(`restored ${key} to its version of revision ${rev}`, 'info');
    await route();
  }
}

async function changes(prefix) {
  const list = await json(`/v1/list/${encKey(prefix)}?recursive=true&limit=1000`);
  const recent = list.entries.filter((e) => e.mod_revision).sort((a, b) => b.mod_revision - a.mod_revision).slice(0, 50);
  const table = el('table', { id: 'changes' }, el('tr', {}, el('th', { class: 'num', text: 'revision' }), el('th', { text: 'key' }),
    el('th', { text: 'time' }), el('th', { text: 'writer' }), el('th', { text: 'version' })));
  const rows = recent.map((e) => {
    const time = el('td', {});
    const writer = el('td', { class: 'writer' });
    table.append(el('tr', { class: 'change', 'data-key': e.key }, el('td', { class: 'num', text: String(e.mod_revision) }),
      el('td', {}, el('a', { href: e.kind === 'dir' ? `#/browse/${encKey(e.key)}/` : `#/key/${encKey(e.key)}`, text: e.key })), time, writer,
      el('td', { class: 'num', text: String(e.version) })));
    return { e, time, writer };
  });
  show(el('h2', { text: `Recent changes under ${prefix || '(root)'}` }), crumbs(prefix, 'changes'),
    el('p', { class: 'muted', text: `the last change of each key, newest first (revision ${list.revision}); a key's page has all its versions` }), table);
  // Who and when, from each key's newest version (the first 20).
  await Promise.all(rows.slice(0, 20).map(async ({ e, time, writer }) => {
    try {
      const h = await json(`/v1/history/${encKey(e.key)}`);
      const v = h.versions.find((x) => x.revision === e.mod_revision) || h.versions[0];
      if (v) { time.textContent = when(v.time_ns); writer.textContent = v.writer || ''; }
    } catch (_) { /* compacted: leave blank */ }
  }));
}

async function cluster() {
  await renderCluster();
  startLive();
}

async function renderCluster() {
  const [info, me] = await Promise.all([json('/v1/cluster'), json('/v1/status')]);
  // The user may have gone to another page while this was asked.
  if (!(location.hash || '').startsWith('#/cluster')) return;
  const table = el('table', { id: 'members' }, el('tr', {}, ...['id', 'role', 'voter', 'term', 'commit', 'applied', 'lag', 'data', 'health', 'client URL']
    .map((t) => el('th', { text: t }))));
  for (const m of info.members) {
    const s = m.status;
    table.append(el('tr', { class: 'member', 'data-id': String(m.id) },
      el('td', { text: String(m.id) + (m.id === me.id ? ' (this one)' : '') }), el('td', { class: 'role', text: s ? s.role : '' }),
      el('td', { text: m.voter ? 'voter' : 'learner' }), el('td', { class: 'num', text: s ? String(s.term) : '' }),
      el('td', { class: 'num', text: s ? String(s.commit_index) : '' }), el('td', { class: 'num', text: s ? String(s.applied_index) : '' }),
      el('td', { class: 'num', text: m.lag === undefined ? '' : String(m.lag) }),
      el('td', { class: 'num size', text: s ? `${Math.round(s.db_size_bytes / 1024)} KiB` : '' }),
      el('td', { class: `health ${s ? 'ok' : 'bad'}`, text: s ? 'ok' : `unreachable: ${m.error || ''}` }),
      el('td', { text: m.client_url })));
  }
  const shown = document.getElementById('live-revision');
  const live = Math.max(me.revision, shown ? Number(shown.textContent) : 0);
  show(el('h2', { text: 'Cluster' }),
    el('p', { id: 'talking-to', text: `This page talks to member ${me.id}, which sees ${info.leader ? `member ${info.leader} as leader` : 'no leader'} in term ${info.term}.` }),
    table, el('p', { class: 'muted' }, 'Live: revision ', el('span', { id: 'live-revision', text: String(live) }), ' (updated from the watch stream)'));
}

// Follows the watch stream of the whole keyspace (fetch, so the token goes
// in a header) and refreshes the cluster table when revisions move.
function startLive() {
  stopLive();
  const ctl = new AbortController();
  liveStream = ctl;
  let pending = null;
  const refresh = () => { if (!pending) pending = setTimeout(() => { pending = null; if (liveStream === ctl) renderCluster().catch(() => {}); }, 500); };
  (async () => {
    const r = await api('/v1/watch/', { signal: ctl.signal, headers: { Accept: 'text/event-stream' } });
    if (!r.ok || !r.body) return;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let at;
      while ((at = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5)).join('\n');
        if (!data) continue;
        try {
          const ev = JSON.parse(data);
          const rev = ev.revision || (ev.events && ev.events.length && ev.events[ev.events.length - 1].revision);
          const live = document.getElementById('live-revision');
          if (rev && live && Number(rev) > Number(live.textContent)) { live.textContent = String(rev); refresh(); }
        } catch (_) { /* a keepalive or another frame */ }
      }
    }
  })().catch(() => {});
  clusterTimer = setInterval(() => { if (liveStream === ctl) refresh(); }, 5000);
}

function stopLive() {
  if (liveStream) liveStream.abort();
  liveStream = null;
  if (clusterTimer) clearInterval(clusterTimer);
  clusterTimer = null;
}

// ---- routing ------------------------------------------------------------

function fail(e) {
  if (e && e.status === 401) {
    message('This cluster needs a token: paste one above.');
    show(el('p', { id: 'need-token', text: 'Sign in with a token to see the keys.' }));
  } else if (e && e.status === 403) {
    message(`Your token may not do that: ${e.message}`);
  } else {
    message(e && e.message ? e.message : String(e));
  }
}

function decode(s) { return s.split('/').map(decodeURIComponent).join('/'); }

async function route() {
  routes += 1;
  if (shownAt < routes - 1) message('');
  const h = location.hash || '#/browse/';
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('current', h.startsWith(a.getAttribute('href').replace(/\/$/, '')));
  if (!h.startsWith('#/cluster')) stopLive();
  try {
    const target = decode(h.replace(/^#\/(key|browse|changes)\//, '').replace(/^#\/cluster.*/, ''));
    const isPrefix = !h.startsWith('#/key/');
    if (!validKey(target, isPrefix)) {
      show(el('p', { id: 'bad-key', text: `${JSON.stringify(target)} is not a key: no empty, "." or ".." parts` }));
      return;
    }
    if (h.startsWith('#/key/')) await keyPage(decode(h.slice(6)));
    else if (h.startsWith('#/changes/')) await changes(decode(h.slice(10)));
    else if (h.startsWith('#/cluster')) await cluster();
    else await browse(decode(h.startsWith('#/browse/') ? h.slice(9) : ''));
  } catch (e) { fail(e); }
}

async function start() {
  document.getElementById('token-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const t = document.getElementById('token-input').value.trim();
    if (t) sessionStorage.setItem(TOKEN, t);
    document.getElementById('token-input').value = '';
    message('');
    await loadWho().catch(fail);
    await route();
  });
  document.getElementById('token-forget').addEventListener('click', async () => {
    sessionStorage.removeItem(TOKEN);
    message('token forgotten', 'info');
    await loadWho().catch(fail);
    await route();
  });
  window.addEventListener('hashchange', () => route());
  await Promise.all([loadWho().catch(fail), loadMember()]);
  await route();
}

document.addEventListener('DOMContentLoaded', start);
