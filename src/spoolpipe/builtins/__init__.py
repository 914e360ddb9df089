"""Built-in processors for everyday tasks, each confined to what the properties allow (docs/builtins.md).

- ``specs``: the pure core: the ``command.<name>.*`` and ``http.<name>.*``
  definitions, argument templates and their filling, outcome rules;
- ``command``: the ``command`` type (a configured program, never a shell);
- ``http``: the ``http.request`` type (a configured URL, urllib only);
- ``files``: ``files.move``, ``files.copy``, ``files.delete``, ``files.archive``
  (confined to ``files.roots``).

Each family module registers its types when imported (every pool process
imports them) and imports what does the work (``urllib``, ``zipfile``...)
only when an activity of its type runs.
"""
