"""The command line run in-process, for the tests of bad input: exit code 2 and one line on stderr; and what a
test that interrupts a real `fbi-ref` process needs."""
import signal

from fbi_ref.cli import main


def ctrl_c_as_a_terminal_sends_it():
    """For Popen(preexec_fn=...): the child takes SIGINT as a terminal's Ctrl-C, whatever this process does with
    it. A shell starts a background job (`make test &`) with SIGINT ignored, and a child inherits that; an
    fbi-ref started so ignores Ctrl-C, as it should, and a test of Ctrl-C would then see nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(capsys, *args):
    """(exit code, stdout, stderr) of the command line run in-process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_exit_2(capsys, *args, says=""):
    """The command fails with exit code 2 and exactly one line on stderr that contains `says`."""
    code, out, err = cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    assert says in err, err
    return err


def die_at(i):
    """A task for a worker pool that kills its own process (SIGKILL, as the out-of-memory killer would) at i = 1."""
    import os
    if i == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return i
