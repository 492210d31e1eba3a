# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_agentsd_global_optspecs
    string join \n color= h/help V/version
end

function __fish_agentsd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_agentsd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_agentsd_using_subcommand
    set -l cmd (__fish_agentsd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c agentsd -n "__fish_agentsd_needs_command" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_needs_command" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_needs_command" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "serve" -d 'Run the daemon: supervise the agents of the config file and serve the API'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "config" -d 'Work with the config file'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "agents" -d 'List, inspect, start, stop and restart agents'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "logs" -d 'Show agents\' recent log lines, or follow them live with -f (several agents in one stream)'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "send" -d 'Write a line to an agent\'s stdin (an agent with stdin = "pipe")'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "history" -d 'Show an agent\'s status changes: time, transition, pid, exit code or signal, reason'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "audit" -d 'Show the audit trail: who started, stopped or restarted what, from where, and how it ended'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "upgrade" -d 'Upgrade the daemon in place to the binary now at its path, without restarting any agent'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "upgrade-check" -d 'The daemon\'s check of a new binary before an in-place upgrade: the config and state as this binary would take them over'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "gen-key" -d 'Make an API key (and optionally a self-signed TLS certificate)'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "install-unit" -d 'Install the systemd unit that runs `agentsd serve`, then enable and start it'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "doctor" -d 'Check this host: config, key, certificate, daemon, directories, limits, unit; a hint for each problem'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "generate-docs" -d 'Write the man pages and shell completions (for packaging)'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "status" -d 'Show the daemon\'s health and agent counts, or follow status and health changes with --watch'
complete -c agentsd -n "__fish_agentsd_needs_command" -f -a "top" -d 'A live dashboard in the terminal: agents, the selected agent\'s log, recent status changes'
complete -c agentsd -n "__fish_agentsd_using_subcommand serve" -l config -d 'The config file [default: /etc/agentsd/agentsd.toml, else a built-in default]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand serve" -l listen -d 'Listen on this address instead of the config\'s `server.listen`' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand serve" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand serve" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and not __fish_seen_subcommand_from check" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and not __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and not __fish_seen_subcommand_from check" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and not __fish_seen_subcommand_from check" -f -a "check" -d 'Validate a config file; exits non-zero and prints every error found'
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and __fish_seen_subcommand_from check" -l config -d 'The config file [default: /etc/agentsd/agentsd.toml]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and __fish_seen_subcommand_from check" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand config; and __fish_seen_subcommand_from check" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "list" -d 'A table of every agent (or JSON with --json)'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "show" -d 'One agent: status, config (env values hidden) and recent log lines'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "start" -d 'Start agents; waits until each is running, and healthy if it has a probe (exit 8 if one ends failed or exited)'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "stop" -d 'Stop agents; waits until no process of each is left'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "restart" -d 'Restart agents; waits until each is up again, and healthy if it has a probe (exit 8 if one ends failed or exited)'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "add" -d 'Add an agent to the daemon\'s config file; it starts unless --no-autostart'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "edit" -d 'Edit an agent\'s table of the daemon\'s config file in $VISUAL or $EDITOR, then apply it'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and not __fish_seen_subcommand_from list show start stop restart add edit rm" -f -a "rm" -d 'Remove an agent from the daemon\'s config file; it is stopped first'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l status -d 'Only the agents with this status' -r -f -a "starting\t''
running\t''
stopping\t''
stopped\t''
exited\t''
backoff\t''
failed\t''
waiting\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l filter -d 'Only the agents whose id contains this text' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -l json -d 'Print JSON (an array of agent summaries) for scripts; with several contexts, each summary has a `host` (its context)'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l json -d 'Print JSON for scripts'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -l raw -d 'Print log lines exactly as written, control characters included (on a terminal they are shown escaped, e.g. ESC as \\x1b)'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -l all -d 'Every agent'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from start" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -l all -d 'Every agent'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from stop" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -l all -d 'Every agent'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from restart" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l env -d 'An environment variable of the agent, NAME=VALUE; repeat for more' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l cwd -d 'Its working directory on the daemon\'s host [default: the config file\'s directory]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -l no-autostart -d 'Do not start it now, nor when the daemon starts (`autostart = false`)'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from edit" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand agents; and __fish_seen_subcommand_from rm" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -s n -l lines -d 'How many recent lines of each agent (at most 10000)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l all -d 'Every agent; with -f also those added while following'
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -s f -l follow -d 'Keep following new lines; reconnects by itself and resumes each agent without gaps'
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l raw -d 'Print lines exactly as written, control characters included (on a terminal they are shown escaped, e.g. ESC as \\x1b)'
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -l json -d 'One JSON object a line: {"agent","cursor","line"}'
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand logs" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand send" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -s n -l lines -d 'How many of the latest changes (1 to 1000)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -l json -d 'One JSON object a line (the API\'s history entries), oldest first'
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand history" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -s n -l lines -d 'How many of the latest entries (1 to 1000)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -l json -d 'One JSON object a line (the API\'s audit entries), oldest first'
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand audit" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l timeout -d 'How long to wait for the new image to answer, in seconds' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -l json -d 'Print the outcome as JSON ({"from","to","pid","away_ms"})'
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade-check" -l config -d 'The running daemon\'s config file (none: the built-in default)' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade-check" -l listen -d 'The running daemon\'s --listen' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade-check" -l handover-version -d 'The handover format the running daemon writes' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade-check" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade-check" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand upgrade-check" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l out -d 'Write the key to this file (mode 0600) instead of printing it' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l tls-dir -d 'Also write a self-signed certificate (cert.pem) and its key (key.pem) here' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l san -d 'A name (DNS or IP) the certificate is for; repeat for more [default: localhost, 127.0.0.1, ::1, this host\'s name]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l name -d 'Also print the `[keys.NAME]` lines to paste into the daemon\'s config (with the key\'s digest, never the key)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l role -d 'The role of the named key: read (every GET, event streams, metrics), operate (also start/stop/restart), admin (also the audit)' -r -f -a "read\t''
operate\t''
admin\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -l force -d 'Replace existing files'
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand gen-key" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l config -d 'The config file the unit passes to `serve`' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l user -d 'Run the daemon as this user instead of root' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l bin -d 'The agentsd binary the unit runs [default: this binary]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l root -d 'Write the unit under this directory (as if it were /) and run nothing' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l dry-run -d 'Print the unit and change nothing'
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -l no-enable -d 'Do not run `systemctl enable --now`'
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand install-unit" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand doctor" -l config -d 'The config file [default: /etc/agentsd/agentsd.toml, else the built-in default]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand doctor" -l unit -d 'The installed unit to compare [default: the first of /etc/systemd/system, /lib/systemd/system, /usr/lib/systemd/system agentsd.service]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand doctor" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand doctor" -l json -d 'Print JSON for scripts: {"ok", "checks": [{"name", "status", "detail", "hint"}]}'
complete -c agentsd -n "__fish_agentsd_using_subcommand doctor" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand generate-docs" -l out -d 'Where `man/` and `completions/` are written' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand generate-docs" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c agentsd -n "__fish_agentsd_using_subcommand generate-docs" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l watch -d 'Keep printing every status and health change as it happens'
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -l json -d 'JSON: health and counts by status; with --watch, each status and health event as the API sends it, one a line (an agent removed from the config: {"agent_id","removed":true,"at"})'
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand status" -s V -l version -d 'Print version'
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -l url -d 'The daemon\'s URL, e.g. https://bots.example.com:8487 [env: AGENTSD_URL]' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -l context -d 'A named context from ~/.config/agentsd/client.toml [env: AGENTSD_CONTEXT]; `all` or a,b: several at once, each with its own key (agents list, status, top; AGENTSD_CONTEXT too)' -r
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -l api-key-file -d 'Read the API key from this file [env: AGENTSD_API_KEY holds the key itself]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -l ca-cert -d 'Trust only certificates issued by (or equal to) the one in this PEM file [env: AGENTSD_CA_CERT]' -r -F
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -l color -d 'When to colour output: auto (only on a terminal, unless NO_COLOR is set), always, never' -r -f -a "auto\t''
always\t''
never\t''"
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c agentsd -n "__fish_agentsd_using_subcommand top" -s V -l version -d 'Print version'
