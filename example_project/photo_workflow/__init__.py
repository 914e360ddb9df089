"""The photo-drop workflow: drop photos into a folder, get masters, renditions and a catalogue.

``processors = photo_workflow.processors`` in ``spoolpipe.properties`` registers
the processors; ``samples`` generates photos to try it with (Pillow only).
See ``example_project/README.md``.
"""
