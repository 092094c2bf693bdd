"""`scopeflow latents`: what the latent browser shows, in a terminal. Without --latent, the SAE's latents
by frequency; with it, one latent's statistics, top contexts (the firing token in [[ ]]) and output tokens."""
from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from flows.config import DEFAULT_CONFIG, ConfigError, load_suite_config
from flows.prepare import open_root
from flows.terminal import console, fail
from sae import sweep_points
from tasks.latent_tables import SaeLatents, decode_tokens, load_sae_latents, token_ids
from tasks.lm.model import load_tokenizer

_LISTED = 30


def add_parser(sub) -> None:
    lt = sub.add_parser("latents", help="an SAE's latents by frequency, or one latent's contexts and output tokens")
    lt.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    lt.add_argument("--site", required=True)
    lt.add_argument("--layer", type=int, required=True)
    lt.add_argument("--width", type=int, help="default: the suite's first width")
    lt.add_argument("--setting", help="the SAE's folder, e.g. lambda_0.01 (default: the suite's first)")
    lt.add_argument("--latent", type=int)
    lt.set_defaults(fn=cmd_latents)


def _visible(text: str) -> str:
    return escape(text.replace("\n", "\u21b5"))


def _print_list(s: SaeLatents, vocab: dict[int, str]) -> None:
    stats = sorted(s.stats.to_pylist(), key=lambda r: (-r["frequency"], r["latent"]))
    table = Table(title=f"{s.key}: {s.stats.num_rows} latents, {sum(r['dead'] for r in stats)} dead; the "
                        f"{min(_LISTED, len(stats))} most frequent", title_justify="left")
    for col in ("latent", "frequency", "max act", "top boosted tokens"):
        table.add_column(col, justify="left" if col.startswith("top") else "right")
    for r in stats[:_LISTED]:
        table.add_row(str(r["latent"]), f"{r['frequency']:.4g}", "-" if r["dead"] else f"{r['max_activation']:.3g}",
                      " · ".join(_visible(vocab[t]) for t in r["top_boosted"][:5]))
    console.print(table)


def _print_latent(s: SaeLatents, latent: int, vocab: dict[int, str]) -> None:
    r = s.stats.slice(latent, 1).to_pylist()[0]
    n_tokens = int(s.stats.schema.metadata[b"n_tokens"])
    console.print(f"[bold]{s.key} latent {latent}[/bold]: frequency {r['frequency']:.4g} ({r['n_firing']} of "
                  f"{n_tokens} tokens)" + ("; dead: it never fired on the held-out tokens" if r["dead"] else
                                           f", max activation {r['max_activation']:.4g}, mean when firing "
                                           f"{r['mean_activation']:.4g}"), highlight=False, soft_wrap=True)
    for name, ids, logits in (("boosts", r["top_boosted"], r["top_boosted_logits"]),
                              ("suppresses", r["top_suppressed"], r["top_suppressed_logits"])):
        console.print(f"{name}: " + ", ".join(f"{_visible(vocab[t])} ({w:.3g})" for t, w in zip(ids, logits)),
                      highlight=False)
    w = s.window
    for c in s.contexts_of(latent):
        raw = "".join(f"[[{vocab[t]}]]" if j == w else vocab.get(t, "") for j, t in enumerate(c["window"]))
        text = _visible(raw)  # escaped whole: a token inside [[ ]] must not read as markup
        console.print(f"{c['activation']:8.4g}  seq {c['seq']} pos {c['pos']}: {text}", highlight=False,
                      soft_wrap=True)  # one line per context, however wide


def cmd_latents(args: argparse.Namespace) -> int:
    try:
        cfg = load_suite_config(args.config)
    except ConfigError as e:
        return fail(str(e))
    first = sweep_points(cfg.sae)[0]
    width, setting = args.width or first.width, args.setting or first.slug
    try:
        s = load_sae_latents(open_root(cfg), args.site, args.layer, width, setting)
    except FileNotFoundError:
        return fail(f"no latents of {args.site}/layer_{args.layer}/width_{width}/{setting} at {cfg.storage.root}: "
                    f"check --site, --layer, --width, --setting, or run `scopeflow run {args.config}` first")
    if args.latent is not None and not 0 <= args.latent < s.stats.num_rows:
        return fail(f"--latent {args.latent}: the SAE has latents 0-{s.stats.num_rows - 1}")
    vocab = decode_tokens(load_tokenizer(cfg.model), token_ids([s]))
    if args.latent is None:
        _print_list(s, vocab)
    else:
        _print_latent(s, args.latent, vocab)
    return 0
