"""Procedurally generated indoor rooms, rendered by analytic ray casting.

Each scene is a closed box room (floor, ceiling and four walls, seen from inside) furnished with
axis-aligned boxes and vertical cylinders standing on the floor and spheres resting on the floor or on a
box. Every surface carries a procedural texture (checkerboard, stripes, wood rings, multi-octave value
noise or tiles with grout) evaluated at the hit point, with random colours, and view-independent
Lambertian shading from a fixed light plus ambient, so a surface point has the same colour in every view.

Rendering intersects all pixel rays with every primitive analytically at once (slab test for the boxes
and the room, quadratics for spheres and cylinder sides, planes for cylinder caps) and keeps the nearest
hit. The room is closed, so every pixel has exact z-depth: no holes, no noise.

World frame: z up, metres; the room is centred on the origin in x / y and its floor is at ``z = 0``.
Cameras follow a smooth arc of an ellipse around the room centre at a clearance of at least
:data:`CAMERA_CLEARANCE_M` from every wall and object, looking across the room centre.

Besides these evaluation rooms (role ``eval``: NeRFs are fitted on them and they are scored), the
generator makes *refiner rooms* (roles ``train`` / ``val``) for the depth refiner, from their own branch of
random streams so they never repeat an evaluation room. They look like what a depth camera records when
someone scans a room: 640 x 480 / 320 x 240 frames at Kinect v1's ~58 degree field of view, independent
hand-held views 0.5-4 m from their target (some looking down at table tops), cluttered with composed
furniture (tables and chairs on thin legs, shelves with boards and things on them, cabinets with handles,
sofas, lamps on thin poles, plants, thin panels, wall shelves and pictures), boxes turned to any angle
(:class:`OrientedBox`), plain, textured and dark materials (which the sensor model drops), and per-room
lighting (:class:`Light`). Rays are only intersected with the objects whose bounding sphere they pass.

Everything is deterministic for ``(config, seed)``: the randomness comes from ``np.random.Generator``
objects derived from the seed and passed explicitly, and textures hash their own integer seeds.

Modules, one job each (lower ones never import higher ones; this package re-exports their public names):

* :mod:`.constants`: the generator's immutable constants (:class:`SyntheticConfig` and the room limits
  live in :mod:`tasks.datasets.config`);
* :mod:`.scene`: the scene model (room, primitives, texture, light, camera arc, ray hits) and primitive
  bounds;
* :mod:`.textures`: random palettes and textures, procedural texture evaluation, shading;
* :mod:`.raycast`: ray / primitive intersection, :func:`cast_rays` and :func:`render_frame`;
* :mod:`.cameras`: the evaluation rooms' camera arc and the refiner rooms' hand-held views;
* :mod:`.rooms`: evaluation room layout (footprints, object placement);
* :mod:`.furniture`: the refiner rooms' furniture pieces and wall items;
* :mod:`.refiner_rooms`: refiner room layout;
* :mod:`.mesh`: ground-truth meshes;
* :mod:`.sources`: the dataset entry points (:func:`synthetic_scenes`, per-room random streams).
"""

from __future__ import annotations

from tasks.datasets.config import CAMERA_CLEARANCE_M, MIN_ROOM_XY_M, MIN_ROOM_Z_M, SyntheticConfig
from tasks.datasets.synthetic.cameras import arc_points, camera_poses, random_camera_path, scan_poses
from tasks.datasets.synthetic.constants import (
    AMBIENT,
    BARE_VIEW_PROB,
    CYLINDER_SECTIONS,
    GENERATOR,
    LIGHT_DIR,
    MAX_ORBIT_ASPECT,
    MAX_ORBIT_STEP_DEG,
    MAX_PLACEMENT_TRIES,
    MAX_VIEW_TRIES,
    MIN_ALBEDO_LUMA,
    MIN_VIEW_SURFACES,
    OBJECT_GAP_M,
    OBJECT_SIZE_M,
    PIECE_KINDS,
    PLACEMENT_MARGIN_M,
    RAY_CHUNK,
    RAY_EPS,
    REFINER_DARK_PROB,
    REFINER_EYE_CLEARANCE_M,
    REFINER_EYE_Z_M,
    REFINER_GAP_M,
    REFINER_MAX_ROLL_DEG,
    REFINER_MIN_LUMA,
    REFINER_ROLE_KEYS,
    REFINER_ROOM_M,
    REFINER_SPAWN_BRANCH,
    REFINER_TEXTURES,
    REFINER_VIEW_M,
    ROOM_FACES,
    SPHERE_SUBDIVISIONS,
    TEXTURE_KINDS,
    TEXTURE_SCALE_M,
    TextureKind,
)
from tasks.datasets.synthetic.furniture import (
    PIECE_BUILDERS,
    Piece,
    cabinet_piece,
    chair_piece,
    clutter_piece,
    lamp_piece,
    objects_on_surface,
    panel_piece,
    plant_piece,
    shelf_piece,
    small_object,
    sofa_piece,
    table_piece,
    wall_item,
)
from tasks.datasets.synthetic.mesh import primitive_mesh, room_mesh
from tasks.datasets.synthetic.raycast import (
    cast_rays,
    intersect,
    intersect_box,
    intersect_cylinder,
    intersect_oriented_box,
    intersect_room,
    intersect_sphere,
    render_frame,
)
from tasks.datasets.synthetic.refiner_rooms import QUARTER_TURNS, Pose, random_refiner_room
from tasks.datasets.synthetic.rooms import (
    footprint,
    footprint_distance,
    footprint_gap,
    furniture_focus,
    place_objects,
    random_room,
)
from tasks.datasets.synthetic.scene import (
    Box,
    CameraPath,
    Cylinder,
    Light,
    OrientedBox,
    Primitive,
    RayHits,
    Room,
    Sphere,
    Texture,
    bounding_sphere,
    bounds,
)
from tasks.datasets.synthetic.sources import (
    describe,
    refiner_rng,
    refiner_room,
    refiner_scenes,
    room_source,
    scene_rng,
    synthetic_room,
    synthetic_scenes,
)
from tasks.datasets.synthetic.textures import (
    dark_palette,
    fbm,
    hash_cells,
    random_palette,
    random_texture,
    shade,
    texture_albedo,
    value_noise,
)

__all__ = [
    "AMBIENT", "BARE_VIEW_PROB", "CAMERA_CLEARANCE_M", "CYLINDER_SECTIONS", "GENERATOR", "LIGHT_DIR",
    "MAX_ORBIT_ASPECT", "MAX_ORBIT_STEP_DEG", "MAX_PLACEMENT_TRIES", "MAX_VIEW_TRIES", "MIN_ALBEDO_LUMA",
    "MIN_ROOM_XY_M", "MIN_ROOM_Z_M", "MIN_VIEW_SURFACES", "OBJECT_GAP_M", "OBJECT_SIZE_M", "PIECE_BUILDERS",
    "PIECE_KINDS", "PLACEMENT_MARGIN_M", "QUARTER_TURNS", "RAY_CHUNK", "RAY_EPS", "REFINER_DARK_PROB",
    "REFINER_EYE_CLEARANCE_M", "REFINER_EYE_Z_M", "REFINER_GAP_M", "REFINER_MAX_ROLL_DEG", "REFINER_MIN_LUMA",
    "REFINER_ROLE_KEYS", "REFINER_ROOM_M", "REFINER_SPAWN_BRANCH", "REFINER_TEXTURES", "REFINER_VIEW_M",
    "ROOM_FACES", "SPHERE_SUBDIVISIONS", "TEXTURE_KINDS", "TEXTURE_SCALE_M", "Box", "CameraPath", "Cylinder",
    "Light", "OrientedBox", "Piece", "Pose", "Primitive", "RayHits", "Room", "Sphere", "SyntheticConfig", "Texture",
    "TextureKind", "arc_points", "bounding_sphere", "bounds", "cabinet_piece", "camera_poses", "cast_rays",
    "chair_piece", "clutter_piece", "dark_palette", "describe", "fbm", "footprint", "footprint_distance",
    "footprint_gap", "furniture_focus", "hash_cells", "intersect", "intersect_box", "intersect_cylinder",
    "intersect_oriented_box", "intersect_room", "intersect_sphere", "lamp_piece", "objects_on_surface",
    "panel_piece", "place_objects", "plant_piece", "primitive_mesh", "random_camera_path", "random_palette",
    "random_refiner_room", "random_room", "random_texture", "refiner_rng", "refiner_room", "refiner_scenes",
    "render_frame", "room_mesh", "room_source", "scan_poses", "scene_rng", "shade", "shelf_piece", "small_object",
    "sofa_piece", "synthetic_room", "synthetic_scenes", "table_piece", "texture_albedo", "value_noise", "wall_item",
]
