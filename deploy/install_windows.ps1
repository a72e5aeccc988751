#Requires -Version 5.1
<#
.SYNOPSIS
    Installs, upgrades or removes centrovision-sync as the Windows service
    "CentroVisionSync".

.DESCRIPTION
    Run from an elevated PowerShell ("Run as administrator"):

      powershell -ExecutionPolicy Bypass -File .\deploy\install_windows.ps1 [-Binary .\centrovision-sync.exe]
      powershell -ExecutionPolicy Bypass -File .\deploy\install_windows.ps1 -Uninstall [-Purge]

    What it does (every step is safe to repeat; re-running it is the upgrade
    procedure). It never downloads anything.
      - C:\CentroVision\sync-service\centrovision-sync.exe  the binary. The
        folder is writable only by Administrators and SYSTEM (the service runs
        as LocalSystem: a folder other users could write to would let them
        replace the binary and run code as SYSTEM).
      - C:\CentroVision\sync-service\config.toml  created from
        config.toml.example only if absent (log file pointed at
        C:\CentroVision\logs\sync.log). It holds secrets, so its ACL is
        restricted to Administrators + SYSTEM (re-applied on every run).
      - C:\CentroVision\logs  Administrators + SYSTEM only (logs may contain
        patient data in error messages).
      - the service CentroVisionSync, registered with NSSM.

    Why NSSM is required: centrovision-sync.exe is a console program. It
    stops cleanly on Ctrl+C but does not implement the Windows Service
    Control Manager protocol, so a service created directly with
    `sc.exe create binPath= ...centrovision-sync.exe` is killed by Windows
    after 30 s with error 1053 ("The service did not respond to the start or
    control request in a timely fashion"). NSSM (the Non-Sucking Service
    Manager, a single nssm.exe) is the supported wrapper: it runs the program,
    sends it Ctrl+C to stop it, restarts it when it exits, and captures its
    console output. The script looks for nssm.exe on PATH, next to this
    script, in C:\nssm and in the install folder, and copies it into the
    install folder (the service points at that copy). Without it the files
    are installed but no service is registered, and the script explains what
    to do (exit code 1). WinSW is an alternative wrapper; see OPERATIONS.md.
    sc.exe is still used, for what it does work for: failure actions that
    restart the service if the NSSM wrapper itself ever dies.

    The service is set to start automatically (delayed, so PostgreSQL and the
    network are up first) but is NOT started on a first install: edit
    config.toml, run `doctor` and `init`, then Start-Service CentroVisionSync.
    On an upgrade of a running service it is stopped for the copy and started
    again.

.PARAMETER Binary
    Path of centrovision-sync.exe. Default: next to this script, in its
    parent folder, or ..\target\release\.

.PARAMETER Uninstall
    Stop and remove the service and the binary. Keeps config.toml and the
    logs unless -Purge is given.

.PARAMETER Purge
    With -Uninstall: also delete C:\CentroVision\sync-service (config.toml
    included) and C:\CentroVision\logs.
#>
[CmdletBinding()]
param(
    [string]$Binary,
    [switch]$Uninstall,
    [switch]$Purge
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$ServiceName = 'CentroVisionSync'
$DisplayName = 'CentroVision Sync Service'
$Description = 'Two-way sync between the clinic''s local PostgreSQL and Supabase (centrovision-sync).'
$BaseDir     = 'C:\CentroVision'
$InstallDir  = 'C:\CentroVision\sync-service'
$LogDir      = 'C:\CentroVision\logs'
$ExePath     = Join-Path $InstallDir 'centrovision-sync.exe'
$ConfigPath  = Join-Path $InstallDir 'config.toml'
$LogFile     = Join-Path $LogDir 'sync.log'
$NssmPath    = Join-Path $InstallDir 'nssm.exe'

# Well-known SIDs: group names are localized (e.g. "Administradores" on a
# Spanish Windows), SIDs are not.
$SidAdmins = '*S-1-5-32-544'
$SidSystem = '*S-1-5-18'
$SidUsers  = '*S-1-5-32-545'

$ScriptDir = $PSScriptRoot
if (-not $ScriptDir) { $ScriptDir = Split-Path -Parent $MyInvocation.MyCommand.Path }

function Fail([string]$Message) {
    Write-Host "ERROR: $Message" -ForegroundColor Red
    exit 1
}

function Info([string]$Message) {
    Write-Host "==> $Message"
}

function Warn([string]$Message) {
    Write-Host "WARNING: $Message" -ForegroundColor Yellow
}

# Runs a native program; fails with its output unless it exits 0.
function Invoke-Native {
    param([string]$Exe, [string[]]$Arguments, [switch]$AllowFailure)
    $previous = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        $output = & $Exe @Arguments 2>&1 | Out-String
    } finally {
        $ErrorActionPreference = $previous
    }
    if ($LASTEXITCODE -ne 0 -and -not $AllowFailure) {
        Fail ("{0} {1} failed (exit code {2}):`n{3}" -f $Exe, ($Arguments -join ' '), $LASTEXITCODE, $output.Trim())
    }
    return $output
}

function First-Existing([string[]]$Paths) {
    foreach ($p in $Paths) {
        if ($p -and (Test-Path -LiteralPath $p -PathType Leaf)) {
            return (Resolve-Path -LiteralPath $p).Path
        }
    }
    return $null
}

function Find-Nssm {
    $candidates = @()
    $onPath = Get-Command 'nssm.exe' -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($onPath) { $candidates += $onPath.Path }
    $candidates += @(
        (Join-Path $ScriptDir 'nssm.exe'),
        (Join-Path $ScriptDir 'nssm\win64\nssm.exe'),
        'C:\nssm\nssm.exe',
        'C:\nssm\win64\nssm.exe',
        'C:\nssm\nssm-2.24\win64\nssm.exe',
        $NssmPath
    )
    return First-Existing $candidates
}

function Get-OurService {
    return Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
}

function Stop-OurService {
    $svc = Get-OurService
    if ($svc -and $svc.Status -ne 'Stopped') {
        Info "stopping $ServiceName"
        Stop-Service -Name $ServiceName -Force
        $svc.WaitForStatus('Stopped', [TimeSpan]::FromSeconds(60))
    }
}

function Remove-OurService {
    if (Get-OurService) {
        Stop-OurService
        Invoke-Native 'sc.exe' @('delete', $ServiceName) | Out-Null
        # Deletion completes once nothing holds a handle (close services.msc).
        for ($i = 0; $i -lt 20 -and (Get-OurService); $i++) { Start-Sleep -Milliseconds 500 }
        if (Get-OurService) {
            Fail "service $ServiceName is marked for deletion but still present: close services.msc / Event Viewer and run this script again"
        }
        Info "service $ServiceName removed"
    }
}

# Administrators + SYSTEM full control (+ Users read/execute when asked),
# nothing inherited. For a folder, children inherit it.
function Set-RestrictedAcl([string]$Path, [switch]$Folder, [switch]$UsersCanRead) {
    $inherit = ''
    if ($Folder) { $inherit = '(OI)(CI)' }
    $grants = @("${SidAdmins}:${inherit}(F)", "${SidSystem}:${inherit}(F)")
    if ($UsersCanRead) { $grants += "${SidUsers}:${inherit}(RX)" }
    Invoke-Native 'icacls.exe' (@($Path, '/inheritance:r', '/grant:r') + $grants) | Out-Null
    Invoke-Native 'icacls.exe' @($Path, '/setowner', $SidAdmins) | Out-Null
}

function Set-ConfigAcl {
    # /reset drops explicit entries someone may have added, then inheritance
    # is cut and only Administrators + SYSTEM remain.
    Invoke-Native 'icacls.exe' @($ConfigPath, '/reset') | Out-Null
    Set-RestrictedAcl $ConfigPath
}

function Install-Config {
    if (Test-Path -LiteralPath $ConfigPath) {
        Info "keeping existing $ConfigPath"
    } else {
        $example = First-Existing @(
            (Join-Path $ScriptDir '..\config.toml.example'),
            (Join-Path $ScriptDir 'config.toml.example'),
            (Join-Path $InstallDir 'config.toml.example')
        )
        if (-not $example) { Fail "config.toml.example not found next to this script or in its parent folder" }
        # The example is UTF-8 without BOM; -Encoding UTF8 reads it correctly
        # on Windows PowerShell 5.1 (whose default is the ANSI code page).
        $text = Get-Content -LiteralPath $example -Raw -Encoding UTF8
        # Windows log path (TOML literal string: backslashes stay as they are).
        $text = $text -replace '(?m)^file\s*=\s*"/var/log/centrovision-sync/sync\.log"', "file = '$LogFile'"
        # CRLF, for Notepad on older Windows Server versions.
        $text = $text -replace "`r?`n", "`r`n"
        [System.IO.File]::WriteAllText($ConfigPath, $text, (New-Object System.Text.UTF8Encoding($false)))
        $script:CreatedConfig = $true
        Info "created $ConfigPath from $example - EDIT IT before starting the service"
    }
    Set-ConfigAcl
    Info "config.toml readable by Administrators and SYSTEM only"
}

function Register-WithNssm([string]$Nssm) {
    $existing = Get-CimInstance -ClassName Win32_Service -Filter "Name='$ServiceName'" -ErrorAction SilentlyContinue
    if ($existing -and ($existing.PathName -notmatch 'nssm\.exe')) {
        # e.g. the original specification's sc.exe/python service.
        Warn "an existing $ServiceName service runs '$($existing.PathName)', not NSSM: replacing it"
        Remove-OurService
        $existing = $null
    }
    if (-not $existing) {
        Invoke-Native $Nssm @('install', $ServiceName, $ExePath) | Out-Null
        Info "service $ServiceName registered (NSSM)"
    } else {
        Info "service $ServiceName exists (NSSM): updating its settings"
    }
    $settings = @(
        @('Application', $ExePath),
        @('AppParameters', "--config $ConfigPath run"),
        @('AppDirectory', $InstallDir),
        @('DisplayName', $DisplayName),
        @('Description', $Description),
        @('ObjectName', 'LocalSystem'),
        @('Start', 'SERVICE_DELAYED_AUTO_START'),
        # Console output (early errors, panics); the service's own log is
        # [logging] file = C:\CentroVision\logs\sync.log.
        @('AppStdout', (Join-Path $LogDir 'service-stdout.log')),
        @('AppStderr', (Join-Path $LogDir 'service-stderr.log')),
        @('AppStdoutCreationDisposition', '4'),
        @('AppStderrCreationDisposition', '4'),
        @('AppRotateFiles', '1'),
        @('AppRotateOnline', '1'),
        @('AppRotateBytes', '10485760'),
        # Restart 10 s after any exit (as systemd's Restart=always,
        # RestartSec=10) except exit code 2 = bad config: fix it first.
        @('AppExit', 'Default', 'Restart'),
        @('AppExit', '2', 'Exit'),
        @('AppRestartDelay', '10000'),
        # Stop: Ctrl+C, then up to 30 s for a clean shutdown (as systemd's
        # TimeoutStopSec=30), then the window/thread methods, then kill.
        @('AppStopMethodSkip', '0'),
        @('AppStopMethodConsole', '30000'),
        @('AppStopMethodWindow', '1500'),
        @('AppStopMethodThreads', '1500'),
        @('AppKillProcessTree', '1')
    )
    foreach ($s in $settings) {
        Invoke-Native $Nssm (@('set', $ServiceName) + $s) | Out-Null
    }
    # If nssm.exe itself dies, Windows restarts the service.
    Invoke-Native 'sc.exe' @('failure', $ServiceName, 'reset=', '86400', 'actions=', 'restart/10000/restart/10000/restart/60000') | Out-Null
    Info "service set to start automatically (delayed start) and to restart on failure"
}

function Show-NextSteps {
    $cli = "& '$ExePath' --config '$ConfigPath'"
    Write-Host ''
    Write-Host 'centrovision-sync is installed.'
    if ($script:WasRunning) {
        Write-Host ''
        Write-Host 'Upgrade done; the service was restarted with the new binary. If the release'
        Write-Host 'notes say so, run init again (OPERATIONS.md, "Upgrading"). Check with:'
        Write-Host "  $cli status"
        return
    }
    $edit = 'Edit the config:'
    if ($script:CreatedConfig) { $edit = 'Edit the config (just created from the example):' }
    Write-Host @"

Next steps (details: $InstallDir\OPERATIONS.md). psql is in
C:\Program Files\PostgreSQL\<version>\bin.
  1. PostgreSQL, once, as the postgres superuser (database name as in config.toml):
       psql -U postgres -d centrovision -v sync_password=... -f $InstallDir\least_privilege_role.sql
     apply $InstallDir\postgresql.conf.snippet to postgresql.conf and restart
     PostgreSQL (Restart-Service postgresql-x64-<version>), and add
     $InstallDir\pg_hba.conf.snippet to pg_hba.conf.
  2. $edit
       notepad $ConfigPath
  3. Check everything; it prints the exact fix for each problem:
       $cli doctor
  4. Initialize (needs superuser rights once, for the publication):
       psql -U postgres -d centrovision -c "ALTER ROLE centrovision_sync SUPERUSER"
       $cli init
       psql -U postgres -d centrovision -f $InstallDir\least_privilege_role.sql   (removes SUPERUSER again)
     and install the upstream functions: add --upstream to init (mode = "postgres"),
     or paste the output of "$cli init --print-upstream-sql" into the Supabase SQL editor.
  5. Start and watch:
       Start-Service $ServiceName
       Get-Service $ServiceName
       Get-Content $LogFile -Tail 50 -Wait
"@
}

function Install-Files([string]$Source) {
    foreach ($dir in @($BaseDir, $InstallDir, $LogDir)) {
        if (-not (Test-Path -LiteralPath $dir)) { New-Item -ItemType Directory -Path $dir | Out-Null }
    }
    Set-RestrictedAcl $InstallDir -Folder -UsersCanRead
    Set-RestrictedAcl $LogDir -Folder

    $sourceFull = (Resolve-Path -LiteralPath $Source).Path
    if ($sourceFull -ne $ExePath) {
        # A running exe cannot be overwritten on Windows: stop the service for
        # the copy, start it again afterwards.
        $svc = Get-OurService
        if ($svc -and $svc.Status -eq 'Running') {
            $script:WasRunning = $true
            Stop-OurService
        }
        Copy-Item -LiteralPath $sourceFull -Destination $ExePath -Force
    }
    Info "installed $ExePath"
    foreach ($f in @('OPERATIONS.md', 'least_privilege_role.sql', 'postgresql.conf.snippet', 'pg_hba.conf.snippet')) {
        $src = Join-Path $ScriptDir $f
        if (Test-Path -LiteralPath $src -PathType Leaf) {
            Copy-Item -LiteralPath $src -Destination (Join-Path $InstallDir $f) -Force
        }
    }
    $example = First-Existing @((Join-Path $ScriptDir '..\config.toml.example'), (Join-Path $ScriptDir 'config.toml.example'))
    if ($example -and ($example -ne (Join-Path $InstallDir 'config.toml.example'))) {
        Copy-Item -LiteralPath $example -Destination (Join-Path $InstallDir 'config.toml.example') -Force
    }
}

function Do-Install {
    $source = $Binary
    if (-not $source) {
        $source = First-Existing @(
            (Join-Path $ScriptDir 'centrovision-sync.exe'),
            (Join-Path $ScriptDir '..\centrovision-sync.exe'),
            (Join-Path $ScriptDir '..\target\release\centrovision-sync.exe'),
            '.\target\release\centrovision-sync.exe'
        )
        if (-not $source) { Fail 'centrovision-sync.exe not found; pass its path with -Binary' }
    }
    if (-not (Test-Path -LiteralPath $source -PathType Leaf)) { Fail "binary not found: $source" }
    # Full path: `& name.exe` would search PATH instead of the current folder.
    $source = (Resolve-Path -LiteralPath $source).Path
    # Catches a binary for the wrong architecture or a damaged copy before
    # anything is changed.
    $badBinary = "$source does not run on this machine ('--version' failed): wrong architecture or damaged file?"
    try {
        $version = (Invoke-Native $source @('--version') -AllowFailure).Trim()
    } catch {
        Fail "$badBinary ($($_.Exception.Message))"
    }
    if ($LASTEXITCODE -ne 0) { Fail $badBinary }
    Info "installing $version"

    $nssm = Find-Nssm
    Install-Files $source
    Install-Config

    if (-not $nssm) {
        Write-Host ''
        Write-Host 'The files are installed, but the Windows service was NOT registered:' -ForegroundColor Yellow
        Write-Host @"
nssm.exe was not found (looked on PATH, next to this script, in C:\nssm and in
$InstallDir).

centrovision-sync.exe is a console program; registered directly with sc.exe it
would be stopped by Windows with error 1053 at every start. NSSM is the
supported service wrapper. On a computer with internet access, get NSSM 2.24
from https://nssm.cc/download, copy win64\nssm.exe next to this script (or to
$InstallDir), and run this script again: it keeps what is already installed.

Meanwhile you can run it in a console to test:
  & '$ExePath' --config '$ConfigPath' doctor
"@
        exit 1
    }

    # The service runs this copy, so the folder nssm.exe came from may go.
    # An existing copy is kept (the service may be running it).
    if (-not (Test-Path -LiteralPath $NssmPath -PathType Leaf)) {
        Copy-Item -LiteralPath $nssm -Destination $NssmPath -Force
        Info "copied $nssm to $NssmPath"
    }
    Register-WithNssm $NssmPath

    if ($script:WasRunning) {
        Start-Service -Name $ServiceName
        Info "service restarted with the new binary"
    }
    Show-NextSteps
}

function Do-Uninstall {
    Remove-OurService
    foreach ($f in @('centrovision-sync.exe', 'nssm.exe', 'OPERATIONS.md', 'least_privilege_role.sql',
                     'postgresql.conf.snippet', 'pg_hba.conf.snippet', 'config.toml.example')) {
        $p = Join-Path $InstallDir $f
        if (Test-Path -LiteralPath $p) { Remove-Item -LiteralPath $p -Force }
    }
    Info "removed the program files from $InstallDir"
    if ($Purge) {
        foreach ($dir in @($InstallDir, $LogDir)) {
            if (Test-Path -LiteralPath $dir) { Remove-Item -LiteralPath $dir -Recurse -Force }
        }
        Info "removed $InstallDir (config.toml included) and $LogDir"
    } else {
        Info "kept $ConfigPath and $LogDir (add -Purge to delete them)"
    }
    Write-Host @"

IMPORTANT: the PostgreSQL side is untouched. The logical replication slot keeps
WAL on disk for as long as it exists; with the service gone it will fill the
disk (up to max_slot_wal_keep_size). If the service is not coming back, run as
the postgres superuser in the clinic database (names are the [sync] defaults):

  SELECT pg_drop_replication_slot('centrovision_sync');
  DROP PUBLICATION IF EXISTS centrovision_sync;
  SELECT pg_replication_origin_drop('centrovision_sync');
  -- optional: DROP TABLE _sync_metadata, _sync_log, _sync_state;
  -- optional: DROP DATABASE centrovision_journal;   -- the journal ([local_postgres] journal_database)
  -- optional: DROP OWNED BY centrovision_sync; DROP ROLE centrovision_sync;
"@
}

# --- main -------------------------------------------------------------------

if ($Purge -and -not $Uninstall) { Fail '-Purge only goes with -Uninstall' }
if ($Uninstall -and $Binary) { Fail '-Uninstall takes no -Binary' }

$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Fail 'this installer must run as Administrator (it registers a service and writes to C:\CentroVision): open PowerShell with "Run as administrator" and run it again.'
}

$script:CreatedConfig = $false
$script:WasRunning = $false
if ($Uninstall) { Do-Uninstall } else { Do-Install }
exit 0
