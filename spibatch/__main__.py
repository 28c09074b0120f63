"""``python -m spibatch`` and the ``spibatch`` command: signal handling first -- a Ctrl-C or SIGTERM while the
command's libraries load must not print a traceback (:mod:`spibatch.interrupts`) --, then the CLI."""


def main() -> None:
    from spibatch import interrupts

    interrupts.install()
    try:
        from spibatch.cli import main as cli_main
    except KeyboardInterrupt as exc:
        interrupts.exit_interrupted(exc)
    cli_main()


if __name__ == "__main__":
    main()
