// The latent browser: SAEs listed in SCOPEFLOW_LATENTS.saes, each SAE's data a script loaded when picked.
(function () {
  "use strict";
  const S = window.SCOPEFLOW_LATENTS;
  const $ = (id) => document.getElementById(id);
  const PER_PAGE = 50;
  let current = null, page = 0;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "onclick") e.onclick = v; else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  const tok = (id) => (id < 0 ? "" : (S.vocab[id] ?? "#" + id));
  const num = (x, d) => (x === null || x === undefined ? "-" : Number(x).toPrecision(d || 3));
  const visible = (t) => t.replace(/\n/g, "\u21b5");

  function hashParams() { return new URLSearchParams(location.hash.slice(1)); }
  function setHash(p) { history.replaceState(null, "", "#" + new URLSearchParams(p).toString()); }

  function load(info, done) {
    if (S.data[info.key]) return done();
    const s = document.createElement("script");
    s.src = info.file;
    s.onload = done;
    s.onerror = () => { $("status").textContent = "could not load " + info.file; };
    document.head.append(s);
  }

  function fillSelect(select, values, chosen) {
    select.replaceChildren(...values.map((v) => el("option", { value: v }, String(v))));
    if (values.map(String).includes(String(chosen))) select.value = chosen;
  }

  function pickers(key) {
    const info = S.saes.find((s) => s.key === key) || S.saes[0];
    const sites = [...new Set(S.saes.map((s) => s.site))];
    fillSelect($("site"), sites, info.site);
    const layers = [...new Set(S.saes.filter((s) => s.site === $("site").value).map((s) => s.layer))];
    fillSelect($("layer"), layers, info.layer);
    const here = S.saes.filter((s) => s.site === $("site").value && String(s.layer) === $("layer").value);
    $("sae").replaceChildren(...here.map((s) => el("option", { value: s.key }, `width ${s.width}, ${s.setting}`)));
    $("sae").value = here.some((s) => s.key === info.key) ? info.key : here[0].key;
  }

  function order(d) {
    const ids = d.latents.map((_, i) => i);
    return ids.sort((a, b) => d.latents[b][0] - d.latents[a][0] || a - b);
  }

  function matches(d, i, q) {
    const l = d.latents[i];
    if (l[4].some((t) => tok(t).toLowerCase().includes(q))) return true;
    return (d.contexts[i] || []).some((c) => tok(c[3][S.window]).toLowerCase().includes(q));
  }

  function showList() {
    const d = S.data[current.key];
    const q = $("search").value.trim().toLowerCase();
    const ids = order(d).filter((i) => !q || matches(d, i, q));
    const pages = Math.max(1, Math.ceil(ids.length / PER_PAGE));
    page = Math.min(page, pages - 1);
    $("pageinfo").textContent = `${ids.length} latents${q ? ` matching "${q}"` : ""}, page ${page + 1} of ${pages}`;
    const rows = ids.slice(page * PER_PAGE, (page + 1) * PER_PAGE).map((i) => {
      const l = d.latents[i];
      return el("tr", { onclick: () => showLatent(i), class: "pick" }, el("td", {}, String(i)),
        el("td", {}, num(l[0])), el("td", {}, num(l[2])), el("td", {}, l[4].slice(0, 5).map(tok).map(visible).join(" \u00b7 ")));
    });
    $("list").replaceChildren(el("tr", {}, el("th", {}, "latent"), el("th", {}, "frequency"), el("th", {}, "max act"),
      el("th", {}, "top boosted tokens")), ...rows);
  }

  function context(c, max) {
    const [act, seq, pos, ids, acts] = c;
    const spans = ids.map((t, j) => {
      const a = max > 0 ? Math.max(0, acts[j]) / max : 0;
      const s = el("span", { class: j === S.window ? "tok fire" : "tok", title: num(acts[j], 4),
        style: `background: rgba(230, 120, 20, ${a.toFixed(3)})` }, visible(tok(t)));
      return s;
    });
    return el("div", { class: "context" }, el("span", { class: "act" }, `${num(act, 4)} (seq ${seq}, pos ${pos})`), ...spans);
  }

  function showLatent(i) {
    const d = S.data[current.key];
    const l = d.latents[i];
    if (!l) { $("latent").replaceChildren(el("p", {}, `no latent ${i} in this SAE (0-${d.latents.length - 1})`)); return; }
    const ctx = d.contexts[i] || [];
    const out = (ids, w) => ids.map((t, j) => `${visible(tok(t))} (${num(w[j])})`).join(", ");
    $("latent").replaceChildren(
      el("h2", { id: "latent-title" }, `latent ${i}`),
      el("p", { class: "stats" }, `frequency ${num(l[0])} (${l[1]} of ${d.n_tokens} tokens), max activation ${num(l[2])}, ` +
        `mean when firing ${num(l[3])}` + (l[1] === 0 ? "; dead: it never fired on the held-out tokens" : "")),
      el("p", {}, "boosts: " + out(l[4], l[5])),
      el("p", {}, "suppresses: " + out(l[6], l[7])),
      el("h3", {}, ctx.length ? `top ${ctx.length} contexts` : "no contexts: the latent never fired"),
      ...ctx.map((c) => context(c, l[2])));
    const p = Object.fromEntries(hashParams()); p.sae = current.key; p.latent = i; setHash(p);
  }

  function open(key, latent) {
    pickers(key);
    current = S.saes.find((s) => s.key === $("sae").value);
    $("status").textContent = `loading ${current.key}`;
    load(current, () => {
      $("status").textContent = `${current.key}: ${current.width} latents, ${current.n_dead} dead`;
      page = 0; showList();
      const first = order(S.data[current.key])[0];
      showLatent(latent === null || latent === undefined || latent === "" ? first : Number(latent));
    });
  }

  function init() {
    if (!S.saes.length) { $("status").textContent = "no SAE has been inspected yet"; return; }
    const p = hashParams();
    $("search").value = p.get("q") || "";
    $("site").onchange = () => open(S.saes.find((s) => s.site === $("site").value).key);
    $("layer").onchange = () => open(S.saes.find((s) => s.site === $("site").value && String(s.layer) === $("layer").value).key);
    $("sae").onchange = () => open($("sae").value);
    $("search").oninput = () => { page = 0; showList(); };
    $("prev").onclick = () => { page = Math.max(0, page - 1); showList(); };
    $("next").onclick = () => { page += 1; showList(); };
    $("jump").onchange = () => showLatent(Number($("jump").value));
    open(p.get("sae") || S.saes[0].key, p.get("latent"));
  }
  init();
})();
