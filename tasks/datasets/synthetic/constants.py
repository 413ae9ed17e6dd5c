"""Constants of the synthetic room generator (immutable).

The evaluation rooms' fixed lighting, palette floor and placement limits, the ray caster's chunk size and
epsilon, mesh tessellation, the refiner rooms' ranges and probabilities, the texture kinds with their scales,
and the order of a room's faces. Lengths are in metres, angles in degrees.

:data:`CAMERA_CLEARANCE_M`, :data:`MIN_ROOM_XY_M` and :data:`MIN_ROOM_Z_M` live in
:mod:`tasks.datasets.config` with :class:`SyntheticConfig`, which validates ``room_size`` against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import numpy as np

GENERATOR = "dnerf.synthetic"
LIGHT_DIR = (0.36, -0.48, 0.80)  # towards the light, normalised when used
AMBIENT = 0.45  # fraction of the albedo every surface gets regardless of orientation
MIN_ALBEDO_LUMA = 0.35  # palette colours are lifted to at least this luma (Rec. 601)
PLACEMENT_MARGIN_M = 0.1  # extra clearance used when placing objects away from the camera arc
OBJECT_GAP_M = 0.05  # minimum horizontal gap between objects and between objects and walls
OBJECT_SIZE_M = (0.2, 1.2)  # range of object extents (box sides, diameters, heights)
MAX_PLACEMENT_TRIES = 200  # rejection-sampling attempts per object before it is skipped
MAX_ORBIT_STEP_DEG = 6.0  # largest orbit angle between consecutive frames
MAX_ORBIT_ASPECT = 1.3  # largest ratio of the camera ellipse's semi-axes
RAY_CHUNK = 32768  # rays cast at once by render_frame
RAY_EPS = 1e-9  # hits closer than this along the ray are ignored
CYLINDER_SECTIONS = 64  # mesh tessellation of cylinders
SPHERE_SUBDIVISIONS = 3  # icosphere subdivisions of sphere meshes

# Refiner rooms (roles train / val): separately seeded, denser, darker, lit per room, seen from hand-held views.
REFINER_SPAWN_BRANCH = 0x5EF1_AE55  # first spawn-key word of refiner rooms (evaluation rooms use (index,))
REFINER_ROLE_KEYS = MappingProxyType({"train": 0, "val": 1})  # second spawn-key word, by role
REFINER_ROOM_M = ((3.0, 7.0), (2.8, 6.0), (2.4, 3.2))  # ranges of the room extents x, y, z
REFINER_MIN_LUMA = 0.12  # palette colours of refiner rooms are lifted to at least this luma
REFINER_DARK_PROB = 0.18  # probability that a furniture texture is dark (dark_palette)
REFINER_GAP_M = 0.03  # minimum horizontal gap between furniture pieces (and 0.01 to the walls)
REFINER_VIEW_M = (0.5, 4.0)  # camera-to-target distance range of the hand-held views
REFINER_EYE_Z_M = (0.3, 2.2)  # camera height range
REFINER_EYE_CLEARANCE_M = 0.15  # minimum distance from the camera to any surface's bounding box / the room
REFINER_MAX_ROLL_DEG = 6.0
MAX_VIEW_TRIES = 200  # random viewpoints tried per frame before falling back
MIN_VIEW_SURFACES = 4  # a view should show at least this many surfaces (objects and room faces) ...
BARE_VIEW_PROB = 0.1  # ... except for this fraction of otherwise acceptable views
#: Texture kinds (and their probabilities) of refiner rooms: furniture, walls, floor, ceiling.
REFINER_TEXTURES: Mapping[str, tuple[tuple[TextureKind, ...], tuple[float, ...]]] = MappingProxyType({
    "object": (("checker", "stripes", "wood", "noise", "tiles", "plain"), (0.08, 0.1, 0.22, 0.2, 0.05, 0.35)),
    "wall": (("stripes", "noise", "tiles", "checker", "wood", "plain"), (0.1, 0.15, 0.05, 0.03, 0.07, 0.6)),
    "floor": (("wood", "tiles", "noise", "checker", "plain"), (0.4, 0.2, 0.2, 0.08, 0.12)),
    "ceiling": (("plain", "noise"), (0.8, 0.2)),
})
#: Furniture kinds of refiner rooms and their probabilities.
PIECE_KINDS = MappingProxyType({
    "table": 0.17, "chair": 0.14, "shelf": 0.12, "cabinet": 0.12, "sofa": 0.06, "lamp": 0.08, "plant": 0.06,
    "clutter": 0.19, "panel": 0.06,
})

TextureKind = Literal["checker", "stripes", "wood", "noise", "tiles", "plain"]
#: Texture kinds of the evaluation rooms (``plain`` surfaces appear in refiner rooms only, so that the
#: evaluation rooms render exactly as before it existed).
TEXTURE_KINDS: tuple[TextureKind, ...] = ("checker", "stripes", "wood", "noise", "tiles")
#: Characteristic size range (metres) of each texture kind: square, period, ring spacing, feature, tile,
#: and for ``plain`` the size of its faint fine-noise modulation.
TEXTURE_SCALE_M = MappingProxyType(
    {"checker": (0.15, 0.5), "stripes": (0.1, 0.35), "wood": (0.06, 0.18), "noise": (0.2, 0.6), "tiles": (0.2, 0.5),
     "plain": (0.2, 0.6)}
)
ROOM_FACES = ("wall -x", "wall +x", "wall -y", "wall +y", "floor", "ceiling")  # face = 2 * axis + hi side
_OTHER_AXES = np.array([[1, 2], [0, 2], [0, 1]])  # in-plane axes of a face, by its normal axis
