"""How a stage runs: in a child process (isolation), started warm (warm), never outliving its parent
(orphans), reporting progress and logging on the way. It reads and writes artifacts only through
components/artifacts/."""
