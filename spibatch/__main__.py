"""``python -m spibatch`` and the ``spibatch`` command: signal handling first -- a Ctrl-C or SIGTERM while the
command's libraries load must not print a traceback (:mod:`spibatch.interrupts`) --, then the CLI."""


def main() -> None:
    from spibatch import interrupts

    interrupts.install()
    try:
        from spibatch.cli import main as cli_main
    except BaseException as exc:   # a signal (also one a C extension's import turned into its ImportError)
        stop = interrupts.chained_interrupt(exc)
        if stop is None:
            raise
        interrupts.exit_interrupted(stop)
    cli_main()


if __name__ == "__main__":
    main()
