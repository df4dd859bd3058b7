using System.CommandLine;

namespace Hotwire.Cli;

public enum ExitCode
{
    Success = 0,
    Failure = 1,
    UsageError = 2,
    InternalError = 70,
}

/// <summary>Runs the command line and turns every anticipated error into one line on stderr.</summary>
public static class CommandRunner
{
    public static int Run(RootCommand root, string[] args)
    {
        try
        {
            ParseResult parsed = root.Parse(args);
            if (parsed.Errors.Count > 0)
            {
                foreach (var error in parsed.Errors)
                {
                    Console.Error.WriteLine($"hotwire: {error.Message}");
                }
                Console.Error.WriteLine("Run 'hotwire --help' for usage.");
                return (int)ExitCode.UsageError;
            }
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"hotwire: {e.Message}");
            return (int)ExitCode.UsageError;
        }
        catch (HotwireException e)
        {
            Console.Error.WriteLine($"hotwire: {e.Message}");
            return (int)ExitCode.Failure;
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("HOTWIRE_DEBUG") is null)
        {
            Console.Error.WriteLine($"hotwire: internal error: {e.GetType().Name}: {e.Message} (set HOTWIRE_DEBUG=1 for details; please report it)");
            return (int)ExitCode.InternalError;
        }
    }
}

/// <summary>The command line itself is wrong (exit code 2).</summary>
public sealed class UsageException(string message) : HotwireException(message);
