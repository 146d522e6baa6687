"""Build CLIPTokenizer files (vocab.json, merges.txt) from CLIP's BPE merge list.

The merge list `bpe_simple_vocab_16e6.txt.gz` ships (MIT) inside the `open-clip-torch` and
`clip-anytorch` wheels. The vocabulary is laid out as CLIP lays it out: 256 byte symbols, the same
with the word-end marker `</w>`, one token per merge in merge order, then the two special tokens.
That order matters for identifier search: a higher id is a later, rarer merge.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from dreambooth.errors import DataError, run_command, writable_folder

NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable-character map, which CLIP's BPE uses too."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_tokenizer_files(bpe_gz: Path, out_dir: Path) -> None:
    """Write `vocab.json` and `merges.txt` for `transformers.CLIPTokenizer` into `out_dir`."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer_config = {  # CLIP's text context is 77 tokens; pad with end-of-text as SD does
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[1], "pad_token": SPECIAL_TOKENS[1], "unk_token": SPECIAL_TOKENS[1],
        "do_lower_case": True,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bpe_gz", type=Path, help="path to bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    if not args.bpe_gz.is_file():
        raise DataError(f"{args.bpe_gz}: no such file; it ships in the open-clip-torch and clip-anytorch wheels")
    build_tokenizer_files(args.bpe_gz, writable_folder(args.out_dir, "out_dir"))


if __name__ == "__main__":
    sys.exit(run_command(main))
