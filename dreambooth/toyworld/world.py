"""The toy world: 64x64 scenes of one Fashion-MNIST item, colored, placed on a drawn context.

Contexts are DreamBench's own phrases, so its prompts apply as written ("a [V] bag on the beach").
Everything is a pure function of a `Scene` (and the scene of a seed), so renders are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

SIZE = 64
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 170, 60),
    "blue": (40, 80, 225), "purple": (135, 50, 185), "pink": (250, 120, 190), "black": (30, 30, 30),
}
CONTEXTS = (
    "in the snow", "on the beach", "in the jungle", "on top of a wooden floor", "on top of pink fabric",
    "on top of green grass", "floating on top of water", "on top of a dirt road", "on a cobblestone street",
    "on top of a white rug", "with a mountain in the background",
)
PATTERNS = ("top-bottom", "left-right", "stripes")


@dataclass(frozen=True)
class Scene:
    """What is in one image. `item` is a 28x28 grayscale object (a Fashion-MNIST image).

    `color` tints the object; `second_color` + `pattern` make it two-toned, a look the caption
    grammar cannot say (used for held-out subjects).
    """

    item: np.ndarray
    class_noun: str
    color: str
    context: str
    x: int  # top-left corner of the object's box, pixels
    y: int
    size: int  # side of the object's box, pixels
    light: float = 1.0  # global brightness
    context_seed: int = 0  # texture details of the background
    second_color: str | None = None
    pattern: str | None = None


def _noise(rng: np.random.Generator, scale: float, cells: int) -> np.ndarray:
    """Smooth value noise in [-scale, scale], shaped (SIZE, SIZE, 1)."""
    coarse = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
    smooth = np.asarray(coarse.resize((SIZE, SIZE), Image.BICUBIC), np.float32) / 127.5 - 1
    return (smooth * scale)[..., None]


def _vertical(top: tuple, bottom: tuple) -> np.ndarray:
    t = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    return np.broadcast_to((1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32), (SIZE, SIZE, 3)).copy()


def _fill(color: tuple) -> np.ndarray:
    return np.broadcast_to(np.array(color, np.float32), (SIZE, SIZE, 3)).copy()


def _snow(rng):
    img = _vertical((190, 200, 215), (235, 240, 250))
    img[int(SIZE * 0.35):] = _vertical((245, 248, 255), (225, 232, 245))[int(SIZE * 0.35):]
    flakes = rng.random((SIZE, SIZE)) < 0.04
    img[flakes] = 255
    return img + _noise(rng, 8, 6)


def _beach(rng):
    img = _vertical((120, 185, 240), (170, 215, 250))
    horizon, shore = int(SIZE * (0.3 + 0.05 * rng.random())), int(SIZE * 0.5)
    img[horizon:shore] = (30, 100, 170)
    img[shore:] = _vertical((235, 210, 150), (215, 185, 120))[shore:]
    return img + _noise(rng, 10, 12)


def _jungle(rng):
    img = _fill((25, 70, 30))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(40):
        cx, cy, r = rng.integers(0, SIZE, 2).tolist() + [int(rng.integers(3, 9))]
        shade = np.array((rng.uniform(20, 60), rng.uniform(90, 160), rng.uniform(20, 60)), np.float32)
        img[(xx - cx) ** 2 / r**2 + (yy - cy) ** 2 / (r / 2.2) ** 2 < 1] = shade
    return img + _noise(rng, 12, 16)


def _wood(rng):
    img = _fill((150, 95, 50))
    for top in range(0, SIZE, 8):
        img[top:top + 8] *= rng.uniform(0.8, 1.15)
        img[top] = (80, 45, 20)
    grain = np.sin(np.linspace(0, 40, SIZE))[None, :, None] * 10 * rng.uniform(0.5, 1)
    return img + grain + _noise(rng, 8, 20)


def _pink_fabric(rng):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    weave = (((xx + yy) % 4) < 2)[..., None] * 14.0
    folds = np.sin(xx / rng.uniform(5, 9) + rng.uniform(0, 6))[..., None] * 22
    return _fill((235, 150, 185)) + weave + folds


def _grass(rng):
    img = _fill((70, 160, 50))
    for _ in range(260):
        x, y, h = int(rng.integers(0, SIZE)), int(rng.integers(0, SIZE)), int(rng.integers(3, 7))
        img[y:y + h, x] = (40, 120, 30) if rng.random() < 0.5 else (120, 200, 80)
    return img + _noise(rng, 8, 10)


def _water(rng):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    waves = np.sin(yy / 1.6 + np.sin(xx / 6 + rng.uniform(0, 6)) * 2)[..., None]
    return _fill((25, 110, 160)) + (waves > 0.8) * 55.0 + _noise(rng, 10, 8)


def _dirt_road(rng):
    img = _fill((160, 120, 80))
    for center in (rng.integers(14, 22), rng.integers(42, 50)):
        img[:, center - 3:center + 3] *= 0.75
    pebbles = rng.random((SIZE, SIZE)) < 0.03
    img[pebbles] = (110, 90, 70)
    return img + _noise(rng, 14, 12)


def _cobblestone(rng):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    row = yy // 8
    shifted = xx + (row % 2) * 5
    cell = (row * 97 + shifted // 10) % 7
    stones = 105 + cell[..., None] * 8.0
    img = np.broadcast_to(stones, (SIZE, SIZE, 3)).astype(np.float32) * np.array((1, 1, 1.05), np.float32)
    mortar = (yy % 8 == 0) | (shifted % 10 == 0)
    img[mortar] = (55, 55, 60)
    return img + _noise(rng, 6, 16)


def _white_rug(rng):
    fuzz = rng.normal(0, 9, (SIZE, SIZE, 1)).astype(np.float32)
    return _fill((238, 234, 224)) + fuzz + _noise(rng, 6, 8)


def _mountain(rng):
    img = _vertical((100, 160, 230), (190, 215, 240))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    peak_x, peak_y, base = rng.integers(20, 44), rng.integers(4, 12), 40
    inside = (yy > peak_y + abs(xx - peak_x) * (base - peak_y) / 30) & (yy < base)
    img[inside] = (120, 115, 125)
    img[inside & (yy < peak_y + 7)] = (245, 245, 250)
    img[base:] = _vertical((90, 140, 60), (70, 110, 45))[base:]
    return img + _noise(rng, 6, 8)


_DRAW = dict(zip(CONTEXTS, (_snow, _beach, _jungle, _wood, _pink_fabric, _grass, _water, _dirt_road,
                            _cobblestone, _white_rug, _mountain)))


def background(context: str, seed: int) -> np.ndarray:
    """The context drawn at float32 (SIZE, SIZE, 3), values about 0..255."""
    return _DRAW[context](np.random.default_rng(seed)).astype(np.float32)


def _tint(scene: Scene) -> np.ndarray:
    """Per-pixel object color, (size, size, 3): one color, or two in the scene's pattern."""
    first = np.array(COLORS[scene.color], np.float32)
    tint = np.broadcast_to(first, (scene.size, scene.size, 3)).copy()
    if scene.second_color is not None:
        yy, xx = np.mgrid[:scene.size, :scene.size]
        half = {"top-bottom": yy >= scene.size // 2, "left-right": xx >= scene.size // 2,
                "stripes": (yy * 6 // scene.size) % 2 == 1}[scene.pattern or "top-bottom"]
        tint[half] = COLORS[scene.second_color]
    return tint


def _shade(scene: Scene) -> np.ndarray:
    """(size, size, 1) in [0, 1]: the Fashion-MNIST intensity at the object's size, used as shading."""
    item = Image.fromarray(scene.item).resize((scene.size, scene.size), Image.BILINEAR)
    return np.asarray(item, np.float32)[..., None] / 255


def _alpha(shade: np.ndarray) -> np.ndarray:
    """How opaque the object is: its faint edges blend into the context."""
    return np.clip(shade * 4, 0, 1)


def object_mask(scene: Scene) -> np.ndarray:
    """float32 (SIZE, SIZE) in [0, 1]: how much of each pixel of the render is the object."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[scene.y:scene.y + scene.size, scene.x:scene.x + scene.size] = _alpha(_shade(scene))[..., 0]
    return mask


def render(scene: Scene) -> np.ndarray:
    """The scene as uint8 (SIZE, SIZE, 3)."""
    img = background(scene.context, scene.context_seed)
    shade = _shade(scene)
    alpha = _alpha(shade)
    obj = _tint(scene) * (0.45 + 0.55 * shade)
    box = img[scene.y:scene.y + scene.size, scene.x:scene.x + scene.size]
    img[scene.y:scene.y + scene.size, scene.x:scene.x + scene.size] = alpha * obj + (1 - alpha) * box
    return np.clip(img * scene.light, 0, 255).astype(np.uint8)


def sample_scene(rng: np.random.Generator, item: np.ndarray, class_noun: str, color: str | None = None,
                 context: str | None = None) -> Scene:
    """A random placement, scale, lighting and texture; color and context random unless given."""
    size = int(rng.integers(26, 47))
    x, y = (int(v) for v in rng.integers(0, SIZE - size + 1, 2))
    return Scene(item=item, class_noun=class_noun, color=color or str(rng.choice(list(COLORS))),
                 context=context or str(rng.choice(CONTEXTS)), x=x, y=y, size=size,
                 light=float(rng.uniform(0.85, 1.1)), context_seed=int(rng.integers(0, 2**31)))


def two_toned(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with its object in two colors: a random second color, in a random pattern."""
    others = [c for c in COLORS if c != scene.color]
    return replace(scene, second_color=str(rng.choice(others)), pattern=str(rng.choice(PATTERNS)))
