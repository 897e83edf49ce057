"""The command line run in-process, for the tests of bad input: exit code 2 and one line on stderr."""
from fbi_ref.cli import main


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
