"""chatapp personas: a storytelling ship's cook and a trip-planning navigator.

chatapp loads ``chatapp_persona_galley.plugin`` through the ``galley`` entry point in the
``chatapp`` group; nothing needs to be configured.
"""
