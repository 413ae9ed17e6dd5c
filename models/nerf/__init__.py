"""Per-scene NeRF: hash encoding -> field -> occupancy grid -> sampling -> volume rendering.

Layers (lower ones never import higher ones): :mod:`.encoding` (multi-resolution hash grid),
:mod:`.field` (density + view-dependent colour), :mod:`.occupancy` (empty-space skipping state),
:mod:`.sampling` and :mod:`.rendering` (plain functions that take the field as a callable).
"""
