"""The `buildkit` command: a thin typer layer over the pipeline stages.

Stage modules are imported inside each command so that `buildkit verify artifact` starts fast and
does not pay for the docker SDK or cryptography. Errors map to exit codes in one place (`_run`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import traceback
from collections.abc import Callable, Iterator
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from buildkit.context import BuildContext
    from buildkit.package import PackageResult
    from buildkit.source import SourcePolicy

from buildkit.errors import (
    EXIT_CODES,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_VIOLATION,
    Terminated,
    UserError,
    VerificationFailed,
)
from buildkit.progress import step
from buildkit.target import DEFAULT_PROFILE

app = typer.Typer(
    name="buildkit",
    help="Build, gate, sign and package payloads for the Raspberry Pi 1B (ARMv6KZ, VFPv2).",
    epilog="Exit codes:\n" + "\n".join(f"{code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
verify_app = typer.Typer(
    help="Check artifacts against a target profile, or signatures against a key.", no_args_is_help=True
)
app.add_typer(verify_app, name="verify")

T = TypeVar("T")


def _run(action: Callable[[], T]) -> T:
    """Run a stage; turn every failure into one line on stderr and its exit code (`EXIT_CODES`).

    SystemExit, not typer.Exit, so that `main` can wrap the whole app in it as well."""
    try:
        return action()
    except UserError as exc:
        typer.echo(f"buildkit: error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None
    except VerificationFailed as exc:
        typer.echo(f"buildkit: {exc}", err=True)
        raise SystemExit(EXIT_VIOLATION) from None
    except Terminated:
        typer.echo("buildkit: terminated; no partial output was kept", err=True)
        raise SystemExit(EXIT_TERMINATED) from None
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("buildkit: interrupted; no partial output was kept", err=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the last line of defence: fail closed, no traceback
        if os.environ.get("BUILDKIT_DEBUG") == "1":
            traceback.print_exc()
        detail = " ".join(str(exc).split())
        typer.echo(
            f"buildkit: internal error: {type(exc).__name__}: {detail} (BUILDKIT_DEBUG=1 shows the traceback)", err=True
        )
        raise SystemExit(EXIT_INTERNAL) from None


class ReportFormat(StrEnum):
    text = "text"
    json = "json"
    sarif = "sarif"
    junit = "junit"


@verify_app.command("artifact")
def verify_artifact(
    paths: Annotated[list[Path], typer.Argument(help="ELF files, directory trees, tar archives, wheels or zips.")],
    profile: Annotated[
        str, typer.Option(help="Target profile: a name from verify/profiles or a TOML file.")
    ] = DEFAULT_PROFILE,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Report format.")] = ReportFormat.text,
    output: Annotated[Path | None, typer.Option(help="Write the report here instead of stdout.")] = None,
    scan_code: Annotated[
        bool, typer.Option("--scan-code", help="Disassemble every object, not only those without attributes.")
    ] = False,
    waiver: Annotated[list[Path] | None, typer.Option(help="Extra waiver file (TOML); repeatable.")] = None,
    closure: Annotated[
        str,
        typer.Option(
            help="Dynamic closure: strict (every library in the tree), auto (strict only for a tree that holds "
            "its own loader; else missing libraries are closure.external), off."
        ),
    ] = "auto",
) -> None:
    """Gate artifacts against a target profile. Exit 0: compatible; 1: a violation; 2: bad input."""
    from buildkit.archgate.gate import CLOSURE_MODES, verify_artifacts
    from buildkit.archgate.report import emit_report

    def action() -> None:
        mode = next((m for m in CLOSURE_MODES if m == closure), None)
        if mode is None:
            raise UserError(f"--closure {closure!r}: expected one of {', '.join(CLOSURE_MODES)}")
        with step(f"verifying {len(paths)} input(s)"):
            report = verify_artifacts(
                paths, profile=profile, scan_code=scan_code, waiver_files=waiver or [], closure=mode
            )
        emit_report(report, fmt.value, output)
        if not report.ok:
            raise typer.Exit(EXIT_VIOLATION)

    _run(action)


PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        help="Read the passphrase from the first line of this file (else $BUILDKIT_KEY_PASSPHRASE, else a prompt)."
    ),
]


AllowInsecureKeyOption = Annotated[
    bool,
    typer.Option(
        "--allow-insecure-key",
        help="Sign with a secret key file that group or others may read (also $BUILDKIT_ALLOW_INSECURE_KEY=1).",
    ),
]


@app.command("keygen")
def keygen(
    secret_key: Annotated[Path, typer.Option(help="Where to write the secret key (mode 0600).")] = Path("buildkit.key"),
    public_key: Annotated[Path, typer.Option(help="Where to write the public key.")] = Path("buildkit.pub"),
    passphrase_file: PassphraseFileOption = None,
    unencrypted: Annotated[
        bool,
        typer.Option(
            "--unencrypted", help="Store the secret key without a passphrase: only for CI keys kept in a secret store."
        ),
    ] = False,
    comment: Annotated[str, typer.Option(help="Label in the key files' untrusted comments.")] = "buildkit",
) -> None:
    """Create an Ed25519 key pair in minisign's formats. Never overwrites an existing key."""
    from buildkit import sign

    def action() -> None:
        if unencrypted and passphrase_file is not None:
            raise UserError("--unencrypted and --passphrase-file contradict each other: choose one")
        sign.refuse_existing_keys(secret_key, public_key)
        if unencrypted:
            typer.echo(
                "buildkit: WARNING: the secret key is NOT encrypted: whoever can read it can sign. "
                "Use --unencrypted only for CI keys kept in a secret store.",
                err=True,
            )
        passphrase = (
            None
            if unencrypted
            else sign.read_passphrase(passphrase_file, f"the new secret key {secret_key}", confirm=True)
        )
        public = sign.keygen(secret_key, public_key, passphrase, comment)
        typer.echo(f"secret key: {secret_key} ({'UNENCRYPTED' if unencrypted else 'encrypted'}, mode 0600)")
        typer.echo(f"public key: {public_key} (key id {public.key_id})")
        typer.echo(f"verify with: minisign -Vm <file> -P {public.to_base64()}")

    _run(action)


@app.command("sign")
def sign_files(
    files: Annotated[list[Path], typer.Argument(help="Files to sign; each gets FILE.minisig beside it.")],
    key: Annotated[Path | None, typer.Option(help="Secret key file (default: $BUILDKIT_KEY).")] = None,
    passphrase_file: PassphraseFileOption = None,
    trusted_comment: Annotated[
        str | None,
        typer.Option(help="The signed comment (default: timestamp:<SOURCE_DATE_EPOCH or now>, file name, 'hashed')."),
    ] = None,
    allow_insecure_key: AllowInsecureKeyOption = False,
) -> None:
    """Write minisign signatures (prehashed ED) that `minisign -V` and `buildkit verify signature` check."""
    from buildkit import sign

    def action() -> None:
        for file in files:
            if not file.is_file():
                raise UserError(f"file to sign {file} not found (or not a regular file)")
        secret = sign.resolve_signing_key(key, passphrase_file, dev_key_dir=None, allow_insecure=allow_insecure_key)
        for file in files:
            typer.echo(sign.sign_file(file, secret, trusted_comment))

    _run(action)


@verify_app.command("signature")
def verify_signature(
    file: Annotated[Path, typer.Argument(help="The signed file.")],
    public_key: Annotated[
        Path | None, typer.Option("--public-key", "-p", help="Public key file (default: ./buildkit.pub).")
    ] = None,
    public_key_base64: Annotated[
        str | None,
        typer.Option("--public-key-base64", "-P", help="The public key as its base64 line, as minisign -P takes it."),
    ] = None,
    signature: Annotated[
        Path | None, typer.Option("--signature", "-x", help="Signature file (default: FILE.minisig).")
    ] = None,
) -> None:
    """Check a minisign signature and print its trusted comment. Exit 0: valid; 1: not valid; 2: bad input."""
    from buildkit import sign

    def action() -> None:
        if public_key is not None and public_key_base64 is not None:
            raise UserError("--public-key and -P both given: choose one")
        key = sign.load_public_key(
            public_key_base64 if public_key_base64 is not None else public_key or sign.DEFAULT_PUBLIC_KEY
        )
        comment = sign.verify_file(file, key, signature)
        typer.echo(f"signature verified: key {key.key_id}", err=True)
        typer.echo(comment)

    _run(action)


class SmokeFormat(StrEnum):
    text = "text"
    junit = "junit"


@app.command("smoke")
def smoke_command(
    target: Annotated[
        Path, typer.Argument(help="What `buildkit package` wrote (OUT_DIR), or a RECIPE to package first.")
    ],
    fmt: Annotated[SmokeFormat, typer.Option("--format", help="Report format.")] = SmokeFormat.text,
    output: Annotated[
        Path | None, typer.Option(help="Write the report here (the text summary still goes to stdout).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds the payload may take to answer after its start.", min=1)
    ] = 60.0,
) -> None:
    """Boot the package the way the Pi would, emulated (root): the platform checks (gates, sandbox, firewall, CPU,
    SIGTERM, tamper) and the checks of the recipe's smoke table. Exit 1 when a check fails."""
    from buildkit.smoke import emit_smoke, smoke

    def action() -> None:
        with _smoke_target(target) as out_dir:
            result = smoke(out_dir, timeout=timeout)
        emit_smoke(result, fmt.value, output)
        if not result.ok:
            raise typer.Exit(EXIT_VIOLATION)

    _run(action)


@contextlib.contextmanager
def _smoke_target(target: Path) -> Iterator[Path]:
    """`target` itself when `buildkit package` wrote it; a recipe is packaged first, with the key in
    $BUILDKIT_KEY or the development key, into a temporary directory removed afterwards."""
    import tempfile

    from buildkit.recipe import RECIPE_FILE
    from buildkit.smoke import MANIFEST, require_host

    require_host()  # before a package is built for nothing
    if (target / MANIFEST).is_file():
        yield target
        return
    if target.is_dir() and not (target / RECIPE_FILE).is_file():
        raise UserError(
            f"{target}: neither an output directory of `buildkit package` (no {MANIFEST}) "
            f"nor a recipe (no {RECIPE_FILE}): pass one of them"
        )
    with tempfile.TemporaryDirectory(prefix="buildkit-smoke-package-") as tmp:
        _package(target, Path(tmp), None, None)
        yield Path(tmp)


RecipeArgument = Annotated[Path, typer.Argument(help="A recipe.toml, or the directory that holds one.")]
OutOption = Annotated[Path | None, typer.Option(help="Output directory (default: out/<recipe name>).")]


AllowSourceOutsideOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-source-outside",
        help="A directory outside the recipe's own that its `source` may resolve into; repeatable.",
    ),
]
MaxSourceSizeOption = Annotated[
    str, typer.Option("--max-source-size", help="Bound on the bytes of the source tree's files (512M, 2GiB, ...).")
]
DEFAULT_MAX_SOURCE_SIZE = "1GiB"


def _source_policy(allow_outside: list[Path] | None, max_size: str) -> SourcePolicy:
    from buildkit.source import SourcePolicy, parse_size

    for directory in allow_outside or ():
        if not directory.is_dir():
            raise UserError(f"--allow-source-outside {directory}: not a directory")
    return SourcePolicy(tuple(d.resolve() for d in allow_outside or ()), parse_size(max_size))


def _context(recipe: Path, out: Path | None, source: SourcePolicy | None = None) -> BuildContext:
    """The recipe, checked, and everything a build resolves once: outputs in `--out`, else
    out/<name>; the cache and the development key in the recipe's project."""
    from buildkit.context import build_context
    from buildkit.recipe import load_recipe
    from buildkit.source import SourcePolicy

    return build_context(load_recipe(recipe, source or SourcePolicy()), out)


def _package(
    recipe: Path,
    out: Path | None,
    key: Path | None,
    passphrase_file: Path | None,
    source: SourcePolicy | None = None,
    allow_insecure_key: bool = False,
) -> PackageResult:
    """Build, gate, sign and package; says which key signed."""
    from buildkit.package import package_recipe
    from buildkit.sign import resolve_signing_key

    ctx = _context(recipe, out, source)
    secret = resolve_signing_key(key, passphrase_file, dev_key_dir=ctx.dev_key_dir, allow_insecure=allow_insecure_key)
    typer.echo(f"buildkit: signing with key {secret.key_id}", err=True)
    return package_recipe(ctx, secret)


@app.command("build")
def build_command(
    recipe: RecipeArgument,
    out: OutOption = None,
    allow_source_outside: AllowSourceOutsideOption = None,
    max_source_size: MaxSourceSizeOption = DEFAULT_MAX_SOURCE_SIZE,
) -> None:
    """Build a recipe's payload and gate it. Exit 0: built and compatible; 1: the gate refused it; 2: bad input."""
    from buildkit.build.stage import GATE_REPORT, build_recipe

    def action() -> None:
        ctx = _context(recipe, out, _source_policy(allow_source_outside, max_source_size))
        out_dir = ctx.out_dir
        with step(f"building {ctx.recipe.name}"):
            result = build_recipe(ctx)
        gate = result.gate
        typer.echo(f"payload: {result.payload_dir}" + (" (cached: nothing rebuilt)" if result.cached else ""))
        typer.echo(
            f"gate: {gate.verdict} (profile {gate.profile}, {len(gate.objects)} ELF object(s), "
            f"{len(gate.errors)} error(s), {len(gate.waived)} waived; report {out_dir / GATE_REPORT})"
        )

    _run(action)


class InitKind(StrEnum):
    go = "go"
    python = "python"


@app.command("init")
def init_command(
    name: Annotated[str, typer.Argument(help="The recipe's name: lowercase letters, digits and '-'.")],
    kind: Annotated[InitKind, typer.Option(help="The payload kind.")] = InitKind.go,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to write it (default: ./NAME); must be new or empty.")
    ] = None,
) -> None:
    """Write a new recipe directory: a minimal single-port service and the [smoke] checks that prove it."""
    from buildkit.scaffold import init_recipe

    def action() -> None:
        made = init_recipe(name, kind.value, directory or Path(name))
        for file in made.files:
            typer.echo(f"wrote {file}")
        typer.echo(f"next: buildkit package {made.directory}  (then, as root: buildkit smoke {made.directory})")

    _run(action)


class InspectFormat(StrEnum):
    text = "text"
    json = "json"


@app.command("inspect")
def inspect_command(
    out_dir: Annotated[Path, typer.Argument(help="What `buildkit package` wrote (OUT_DIR).")],
    fmt: Annotated[InspectFormat, typer.Option("--format", help="Report format.")] = InspectFormat.text,
) -> None:
    """What a package holds and what it costs: sizes by directory, Debian package, wheel and Go module; the gate
    verdict and waivers; the signature and key id; the overlay's services and firewall. Exit 1: the signature does
    not verify, the overlay trusts another key, or the gate failed."""
    import json

    from buildkit.inspect import inspect_package, inspection_ok, render_text

    def action() -> None:
        report = inspect_package(out_dir)
        typer.echo(json.dumps(report, indent=2, sort_keys=True) if fmt is InspectFormat.json else render_text(report))
        if not inspection_ok(report):
            raise typer.Exit(EXIT_VIOLATION)

    _run(action)


@app.command("doctor")
def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """List the tools the pipeline uses: found or not, versions, install commands. Exit 1: a required one is missing."""
    import json

    from buildkit.doctor import diagnose, render_text

    def action() -> None:
        report = diagnose()
        typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_text(report), nl=as_json)
        if not report.ok:
            raise typer.Exit(EXIT_VIOLATION)

    _run(action)


@app.command("package")
def package_command(
    recipe: RecipeArgument,
    out: OutOption = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="Secret key file (default: $BUILDKIT_KEY, else a development key in the project's .buildkit/dev-key/)."
        ),
    ] = None,
    passphrase_file: PassphraseFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
    allow_source_outside: AllowSourceOutsideOption = None,
    max_source_size: MaxSourceSizeOption = DEFAULT_MAX_SOURCE_SIZE,
    allow_insecure_key: AllowInsecureKeyOption = False,
) -> None:
    """Build, gate, sign and package a recipe: apkovl, payload image, signed manifest. Exit 1: the gate refused it."""
    import json

    def action() -> None:
        source = _source_policy(allow_source_outside, max_source_size)
        result = _package(recipe, out, key, passphrase_file, source, allow_insecure_key)
        written = {
            "apkovl": result.apkovl,
            "payload_image": result.payload_image,
            "manifest": result.manifest,
            "signature": result.signature,
            "public_key": result.public_key,
            "sdcard": result.sdcard_readme,
        }
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        **{k: str(v) for k, v in written.items()},
                        "manifest_sha256": result.manifest_sha256,
                        "key_id": result.key_id,
                        "source_date_epoch": result.source_date_epoch,
                        "gate": result.build.gate.verdict,
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
            return
        for what, path in written.items():
            typer.echo(f"{what}: {path}")
        typer.echo(
            f"signed by key {result.key_id}; manifest sha256 {result.manifest_sha256}; "
            f"gate {result.build.gate.verdict}; SOURCE_DATE_EPOCH {result.source_date_epoch}"
        )

    _run(action)


_signalled: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    """SIGINT and SIGTERM become exceptions, so that the stages' cleanup (`finally`: staging
    directories in the cache and the out dir, temporary files) runs for both; a second signal during
    that cleanup is ignored (SIGKILL still ends the process). A handler, not SIG_IGN: the programs a
    cleanup starts get the default dispositions."""
    if _signalled:
        return
    _signalled.append(signum)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def main() -> None:
    """The console script; a bug outside a command's own `_run` (its stage imports) exits 3 as well."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _run(partial(app, prog_name="buildkit"))


if __name__ == "__main__":
    main()
