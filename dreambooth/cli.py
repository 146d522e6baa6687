"""The `dreambooth` command: parses arguments, builds configs, calls the library. Nothing else.

    dreambooth train --pretrained_model_name_or_path base --instance_data_dir photos --class_noun dog
    dreambooth batch runs.yaml
    dreambooth identifier --model base
    dreambooth generate --model out --prompt "a {identifier} {class_noun} on the beach" -n 4
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Literal, get_args, get_origin

from dreambooth.config import (GenerationPrecision, TrainConfig, config_types, default_of, field_keys, flag_spellings,
                               from_dict, read_config_file, typed_values, without_none)
from dreambooth.diffusers_flags import DIFFUSERS_NO_OPS, EPOCHS_REFUSED, add_diffusers_flags
from dreambooth.errors import (ConfigError, finite_float, image_side, positive_int, run_command, seed_int,
                               writable_folder)

log = logging.getLogger("dreambooth")

BASE_HELP = "a LoRA folder's base model (default: the one it was trained on, as its dreambooth_config.yaml records)"


def metavar_of(name: str, hint) -> str:
    """{a,b,c} for an option of fixed choices, as argparse shows choices; else NAME."""
    hint = without_none(hint)
    return "{" + ",".join(get_args(hint)) + "}" if get_origin(hint) is Literal else name.upper()


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (diffusers spelling, dashed spelling, aliases); bools get --no_X."""
    hints = config_types()
    for f in fields(TrainConfig):
        hint, meta = hints[f.name], f.metadata
        default = default_of(f.name)
        # unset by default: the help says what that means, where it means anything
        help_text = meta["help"] if default is None else f"{meta['help']} (default: {default})"
        flags = flag_spellings(f.name, meta["aliases"])
        if hint is bool:
            parser.add_argument(*flags, dest=f.name, action="store_const", const=True, help=help_text)
            parser.add_argument(*flag_spellings(f"no_{f.name}"), dest=f.name, action="store_const", const=False,
                                # (--no_prior_preservation, below, is listed for with_prior_preservation)
                                help=f"turn --{f.name} off" if default and f.name != "with_prior_preservation"
                                else argparse.SUPPRESS)
        elif get_origin(hint) is tuple:
            parser.add_argument(*flags, dest=f.name, action="append", metavar="TEXT", help=help_text + "; repeatable")
        else:  # values (choices too) are checked by the config, with one-line messages
            parser.add_argument(*flags, dest=f.name, metavar=metavar_of(f.name, hint), help=help_text)
    parser.add_argument("--no_prior_preservation", "--no-prior-preservation", dest="with_prior_preservation",
                        action="store_const", const=False, help="train without the prior term (lambda = 0)")
    add_diffusers_flags(parser)


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """Config file values, overridden by the flags given on the command line."""
    values = typed_values(field_keys(read_config_file(args.config), args.config), args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if v is not None and k in config_types()}
    if getattr(args, "epochs_ignored", None) is not None and "max_train_steps" not in {**values, **given}:
        raise ConfigError(EPOCHS_REFUSED)
    for k in vars(args):
        if k.startswith("noop") and getattr(args, k) is not None:
            log.info("%s: %s", k[4:], DIFFUSERS_NO_OPS[k[4:]])
    return from_dict({**values, **given}, source=args.config or "command line")


def cmd_train(args: argparse.Namespace) -> None:
    cfg = build_train_config(args)
    if args.check:
        from dreambooth.preflight import preflight

        report = preflight(cfg)
        if text := report.text():
            print(text)
        report.raise_if_problems()
        return
    from dreambooth.trainer import train

    out = train(cfg)
    if int(os.environ.get("RANK", "0")):  # under a launcher, the first process speaks for the run
        return
    if cfg.lora:
        print(f"saved the LoRA adapters to {out} (load them onto the base model with pipe.load_lora_weights, "
              f"or `dreambooth generate --model {out}`)")
        if cfg.lora_format == "kohya":
            print(f"  for AUTOMATIC1111 / ComfyUI: {out / 'lora_kohya.safetensors'}")
    else:
        print(f"saved the personalized pipeline to {out}")
    if cfg.keep_best and (out / "best" / "best.json").is_file():
        print(f"  the best-scoring step's model: {out / 'best'} (best.json says which step)")


def cmd_batch(args: argparse.Namespace) -> None:
    from dreambooth.batch import run_batch

    outputs = run_batch(args.file, args.shard, check_only=args.check)
    if args.check:
        return
    if outputs:
        print(f"saved {len(outputs)} personalized model(s)" + "".join(f"\n  {out}" for out in outputs))
    else:
        print("no run left to train here (the line above counts them)")


def checked_model(path: str | Path) -> Path:
    """A command's --model folder, checked before any work, so a mistake names the option the user typed."""
    from dreambooth.models import check_model_folder

    return check_model_folder(path, option="--model")


def checked_trained(path: str | Path, base: str | None = None) -> Path:
    """A --model that may also be a LoRA folder `dreambooth train` wrote, loaded onto --base or its recorded base."""
    from dreambooth.outputs import is_lora_folder, lora_base

    folder = Path(path).expanduser()
    if is_lora_folder(folder):
        lora_base(folder, base)
        return folder
    if base is not None:
        raise ConfigError(f"--base: only for a LoRA folder, and {folder} is a full pipeline; drop --base")
    return checked_model(folder)


def cmd_identifier(args: argparse.Namespace) -> None:
    from dreambooth.identifier import find_identifiers
    from dreambooth.models import load_tokenizers
    from dreambooth.outputs import is_lora_folder, lora_base

    model = checked_trained(args.model, args.base)
    tokenizers = load_tokenizers(lora_base(model, args.base) if is_lora_folder(model) else model)  # SDXL: both
    print("rank  token_id  identifier")
    for rank, candidate in enumerate(find_identifiers(tokenizers, top_k=args.top_k), start=1):
        print(f"{rank:>4}  {candidate.token_id:>8}  {candidate.text}")


def cmd_generate(args: argparse.Namespace) -> None:
    from dreambooth.generate import Sampling, generate
    from dreambooth.outputs import training_record

    model = checked_trained(args.model, args.base)
    if args.output is None and not training_record(model):  # a base model's folder is not this tool's to write in
        raise ConfigError(f"--output: {model} is a model `dreambooth train` did not write; name a folder for the "
                          "images")
    output = Path(args.output or model / "samples").expanduser()
    created = not output.exists()
    out = writable_folder(output, "--output")
    sampling = Sampling(args.num_images, args.steps, args.guidance_scale, args.seed, args.batch_size,
                        args.negative_prompt, args.height, args.width, args.lora_scale)
    try:
        paths = generate(model, args.prompt, out, sampling, args.base)
    except BaseException:
        if created and not any(out.iterdir()):  # made for this call, which wrote nothing: not left behind
            out.rmdir()
        raise
    print(f"wrote {len(paths)} image{'s' * (len(paths) != 1)} and grid.png to {out}")


def cmd_class_images(args: argparse.Namespace) -> None:
    from dreambooth.class_images import generate_for_model

    paths = generate_for_model(Path(args.model), args.prompt, args.num_images, writable_folder(args.cache_dir, "--cache_dir"),
                               args.resolution, args.steps, args.guidance_scale, args.seed, args.batch_size,
                               args.prior_generation_precision)
    print(f"{len(paths)} class images in {paths[0].parent if paths else args.cache_dir}")


def cmd_demo(args: argparse.Namespace) -> None:
    from dreambooth.demo import DemoSettings, run_demo

    if args.model:
        checked_model(args.model)
    settings = DemoSettings.fast() if args.fast else DemoSettings()
    run_demo(writable_folder(args.output, "--output"), args.subject, args.model, settings=settings)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dreambooth.evaluation.evaluate import DEFAULT_ENCODERS, evaluate
    from dreambooth.evaluation.metrics.prompt_fidelity import load_prompt_scorer
    from dreambooth.evaluation.report import write_report

    generation = {"prompts": "--prompts", "num_images": "-n", "steps": "--steps", "seed": "--seed", "base": "--base"}
    if args.images:
        given = [flag for name, flag in generation.items() if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)}: only with --model, whose images are generated; "
                              "--images scores the images as they are")
    scorer = load_prompt_scorer(args.prompt_scorer, option="--prompt_scorer")
    if args.images and scorer is not None and not args.identifier:
        log.warning("warning: --images without --identifier: prompt fidelity reads each prompt as written, the "
                    "subject's word included (the usual CLIP-T convention drops it); pass --identifier to drop it")
    if args.model:
        checked_trained(args.model, args.base)
    # unset generation options take evaluate()'s defaults, so the CLI and the API sample alike
    sampling = {key: value for key, value in (("n_per_prompt", args.num_images), ("steps", args.steps),
                                              ("seed", args.seed)) if value is not None}
    out = writable_folder(args.output, "--output")
    result = evaluate(Path(args.images or args.model).expanduser(), Path(args.real).expanduser(),
                      class_noun=args.class_noun, identifier=args.identifier, prompts=args.prompts,
                      encoders=tuple(args.encoder or DEFAULT_ENCODERS), prompt_scorer=scorer,
                      out=out, base=args.base, **sampling)
    paths = write_report(result, out)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


class DefaultsShown(argparse.HelpFormatter):
    """Each option's help ends with its default, where it has one that its help does not already say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is unset for unset in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors instead of a screenful of usage, and defaults in the help."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=DefaultsShown, **kwargs)

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def cmd_merge(args: argparse.Namespace) -> None:
    from dreambooth.export import merge_lora

    out = merge_lora(Path(args.lora).expanduser(), writable_folder(args.output, "--output"), args.scale,
                     Path(args.base) if args.base else None)
    print(f"merged {args.lora} at scale {args.scale} into {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from dreambooth.export import export_kohya_lora
    from dreambooth.outputs import is_lora_folder
    from dreambooth.single_file import export_single_file

    output = Path(args.output).expanduser()
    writable_folder(output.parent, "--output's folder")
    model = checked_trained(args.model, args.base)
    if is_lora_folder(model):
        out = export_kohya_lora(model, output, args.base, half=args.half)
        print(f"wrote {out} (kohya-ss LoRA layout, for AUTOMATIC1111 / ComfyUI, on the base model it was trained on)")
    else:
        out = export_single_file(model, output, half=args.half)
        print(f"wrote {out} (original Stable Diffusion key layout, for AUTOMATIC1111 / ComfyUI)")


def cmd_import(args: argparse.Namespace) -> None:
    from dreambooth.single_file_import import import_single_file

    writable_folder(Path(args.output).expanduser().parent, "--output's folder")  # it stages the model there
    out = import_single_file(args.file, args.output, args.family, args.config, args.allow_pickle)
    print(f"wrote {out}; train on it with --pretrained_model_name_or_path {out}")


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="personalize a model on a few subject photos")
    train.add_argument("--config", help="YAML/TOML/JSON file of options (flags override it)")
    train.add_argument("--check", action="store_true", help="validate everything, report, and stop")
    add_train_options(train)
    train.set_defaults(run=cmd_train)


def _add_batch(sub) -> None:
    batch = sub.add_parser("batch", help="many personalizations from one YAML/TOML/JSON file of runs",
                           description="Train every run of FILE: `defaults:` (options shared by all runs) and "
                                       "`runs:` (a list of option mappings, each with its own output_dir). All "
                                       "runs are checked first; finished runs are skipped, interrupted ones "
                                       "resumed; a failed run is reported at the end while the others go on.")
    batch.add_argument("file", help="the runs file")
    batch.add_argument("--check", action="store_true", help="check every run, print the plan, and stop")
    batch.add_argument("--shard", metavar="K/N", help="only runs K, K+N, K+2N, ... (one share of N side by side)")
    batch.set_defaults(run=cmd_batch)


def _add_identifier(sub) -> None:
    ident = sub.add_parser("identifier", help="list rare-token identifiers of a model's tokenizer")
    ident.add_argument("--model", required=True, help="diffusers pipeline folder (or a LoRA folder: its base's)")
    ident.add_argument("--base", help=BASE_HELP)
    ident.add_argument("--top_k", "--top-k", "-k", type=positive_int, default=10, help="how many to list, best first")
    ident.set_defaults(run=cmd_identifier)


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="sample a (personalized) model")
    gen.add_argument("--model", required=True, help="pipeline folder written by `dreambooth train`")
    gen.add_argument("--prompt", required=True, help="may use {identifier} and {class_noun}")
    gen.add_argument("-n", "--num_images", "--num-images", type=positive_int, default=4, help="images to sample")
    gen.add_argument("--output", type=Path, help="folder for the PNGs (default: MODEL/samples for a model `train` "
                     "wrote)")
    gen.add_argument("--steps", type=positive_int, default=default_of("inference_steps"), help="sampler steps")
    gen.add_argument("--guidance_scale", "--guidance-scale", type=finite_float, default=default_of("guidance_scale"),
                     help="classifier-free guidance")
    gen.add_argument("--seed", type=seed_int, default=default_of("seed"),
                     help="image i uses seed + i, and is saved as its number")
    gen.add_argument("--batch_size", "--batch-size", type=positive_int, default=default_of("sample_batch_size"),
                     help="images sampled at once (memory); the images are the same at any batch size")
    gen.add_argument("--negative_prompt", "--negative-prompt", help="what the images should not show")
    gen.add_argument("--height", type=image_side, help="image height in pixels, a multiple of 8 (default: the size "
                     "the model was trained at, else its native size)")
    gen.add_argument("--width", type=image_side, help="image width in pixels, a multiple of 8 (default: as "
                     "--height's)")
    gen.add_argument("--lora_scale", "--lora-scale", type=finite_float,
                     help="how strongly a LoRA folder's adapters apply (default 1: as trained; 0: the base model)")
    gen.add_argument("--base", help=BASE_HELP)
    gen.set_defaults(run=cmd_generate)


def _add_class_images(sub) -> None:
    cls = sub.add_parser("class-images", help="generate (or reuse cached) class images for prior preservation")
    cls.add_argument("--model", required=True, help="base model folder")
    cls.add_argument("--prompt", required=True, help='class prompt, e.g. "a dog"')
    cls.add_argument("-n", "--num_images", "--num-images", type=positive_int, default=default_of("num_class_images"),
                     help="class images the cache should hold; the missing ones are drawn")
    cls.add_argument("--cache_dir", "--cache-dir", default=default_of("class_cache_dir"),
                     help="the class-image cache `train --class_cache_dir` reads (one entry per model and settings)")
    cls.add_argument("--resolution", type=positive_int,
                     help="default: the model's native size, the one `train` draws at (other sizes fill a cache "
                          "that `train` does not read)")
    cls.add_argument("--steps", type=positive_int, default=default_of("class_inference_steps"), help="sampler steps")
    cls.add_argument("--guidance_scale", "--guidance-scale", type=finite_float,
                     default=default_of("class_guidance_scale"), help="classifier-free guidance")
    cls.add_argument("--seed", type=seed_int, default=default_of("seed"),
                     help="image i's noise comes from (seed, i)")
    cls.add_argument("--batch_size", "--batch-size", type=positive_int, default=default_of("sample_batch_size"),
                     help="images sampled at once (memory)")
    cls.add_argument("--prior_generation_precision", choices=get_args(GenerationPrecision),
                     help="default (or no): fp16 on a GPU, else fp32, the precision `train` draws in")
    cls.set_defaults(run=cmd_class_images)


def _add_merge(sub) -> None:
    merge = sub.add_parser("merge", help="fold a LoRA into its base model and save a full pipeline folder")
    merge.add_argument("--lora", required=True, help="folder written by `dreambooth train --lora`")
    merge.add_argument("--output", required=True, help="where the merged pipeline is written")
    merge.add_argument("--scale", type=finite_float, default=1.0, help="LoRA strength folded in")
    merge.add_argument("--base", help=BASE_HELP)
    merge.set_defaults(run=cmd_merge)


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="write a model for A1111/ComfyUI: a pipeline folder as one .safetensors "
                                           "file, a LoRA folder as a kohya-ss LoRA file")
    export.add_argument("--model", required=True,
                        help="SD 1.x, 2.x or SDXL pipeline folder (e.g. written by train or merge), or a LoRA folder "
                             "train wrote")
    export.add_argument("--output", required=True, help="the .safetensors file to write")
    export.add_argument("--half", action="store_true", help="store weights in fp16 (half the size)")
    export.add_argument("--base", help=BASE_HELP)
    export.set_defaults(run=cmd_export)


def _add_import(sub) -> None:
    imp = sub.add_parser("import", help="turn an A1111/ComfyUI single-file checkpoint into a base-model folder",
                         description="Write a single-file SD 1.x, 2.x or SDXL checkpoint (original key layout) as "
                                     "a diffusers pipeline folder, the base model `train` takes. The family is "
                                     "told from the file's keys and metadata (an SD 2.x file without: 768-v).")
    imp.add_argument("file", help="the .safetensors checkpoint")
    imp.add_argument("--output", required=True, help="the pipeline folder to write (new or empty)")
    imp.add_argument("--family", choices=("sd1", "sd2-v", "sd2-base", "sdxl"),
                     help="the file's architecture (default: from its keys and metadata; name sd2-base for an "
                          "SD 2.x base model whose file does not say so)")
    imp.add_argument("--config", help="a diffusers pipeline folder whose configs describe the file (other architectures)")
    imp.add_argument("--allow_pickle", "--allow-pickle", action="store_true",
                     help="load a pickled .ckpt (only from a source you trust)")
    imp.set_defaults(run=cmd_import)


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="run the whole method on the shipped toy-world model (CPU, minutes)")
    demo.add_argument("--output", type=Path, default=Path("dreambooth-demo"),
                      help="folder for demo.png and index.html")
    demo.add_argument("--subject", default="striped-bag",
                      help='a folder name under examples/, or a folder of photos with a subject.json '
                           '({"class_noun": "bag"})')
    demo.add_argument("--model", type=Path, default=None, help="base model (default: the shipped toy-world model)")
    demo.add_argument("--fast", action="store_true", help="a few steps only: a smoke test of the pipeline")
    demo.set_defaults(run=cmd_demo)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="the paper's metrics: subject fidelity, prompt fidelity, PRES, DIV")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="personalized model folder (images are generated)")
    source.add_argument("--images", help="folder of generated images: one sub-folder per prompt with prompt.txt")
    ev.add_argument("--real", required=True, help="folder of the real subject photos")
    ev.add_argument("--class_noun", "--class-noun", help="default: recorded in the model (required with --images)")
    ev.add_argument("--identifier", help="default: recorded in the model; with --images, removed from the prompts "
                                         "before prompt fidelity")
    ev.add_argument("--prompts",
                    help="dreambench-object, dreambench-live, dreambench-toyworld or a file (default: by class noun)")
    ev.add_argument("--encoder", action="append", default=None,
                    help="dino-imgfocus, efficientnet-lite0 or hf:<folder>; repeatable")
    ev.add_argument("--prompt_scorer", "--prompt-scorer", default="none",
                    help="none, toy-judge or hf:<CLIP model folder> (CLIP-T)")
    ev.add_argument("-n", "--num_images", "--num-images", type=positive_int, help="images per prompt (default: 4)")
    ev.add_argument("--steps", type=positive_int, help="sampler steps (default: 50)")
    ev.add_argument("--seed", type=seed_int, help="image i uses seed + i (default: 0)")
    ev.add_argument("--base", help=BASE_HELP)
    ev.add_argument("--output", "--output_dir", type=Path, required=True, help="folder for images and reports")
    ev.set_defaults(run=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dreambooth", description="DreamBooth personalization of diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    _add_train(sub)
    _add_batch(sub)
    _add_identifier(sub)
    _add_generate(sub)
    _add_class_images(sub)
    _add_merge(sub)
    _add_export(sub)
    _add_import(sub)
    _add_demo(sub)
    _add_evaluate(sub)
    parser.commands = sub.choices
    return parser


def quiet_libraries() -> None:
    """Keep the terminal for our progress and errors, not the libraries' advice."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is downloaded here, whatever the environment says
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is first imported
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command's own parser, whose --help lists its options
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    return run_command(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
