"""The applications on top of the library: the ``rsclip`` command line (:mod:`rsclip.app.cli`) and the web app
(:mod:`rsclip.app.web`), which never import each other, and what both use: the launcher that starts the web
server (:mod:`rsclip.app.server`) and the stopping of the process groups they start (:mod:`rsclip.app.processes`).
"""
