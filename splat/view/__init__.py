"""Looking at a model: ``viewer`` (the live web viewer, viser), ``camera_path`` (orbit / spiral / interpolated
paths fitted to the training cameras, saved as JSON) and ``video`` (frames along a path as MP4, GIF or PNG).

May import: the base, ``splat.render``, ``splat.scene`` and ``splat.gaussians``; never ``training``, ``edit`` or
``commands`` (a viewer follows a training run through the step callback it is given, not by importing it).
"""
