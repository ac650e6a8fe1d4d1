"""The scene: photos and their cameras.

``colmap`` reads a COLMAP model (undistorting when needed) into pinhole :class:`~splat.scene.colmap.View` s and
SfM points; ``sfm`` runs structure-from-motion (``splat prepare``); ``ensure`` runs it when a scene has no
model yet; ``views`` holds the training / held-out views with their resized images (``load_split``);
``cameras`` the cameras as a run saw them (for the viewer and camera paths).

May import: ``splat.config``, ``splat.outputs``, ``safeio`` (the base), never another ``splat`` folder.
"""
