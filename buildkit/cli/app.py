"""The `buildkit` commands: a thin typer layer over the pipeline stages.

Stage modules are imported inside each command, so that one command does not pay for the docker
SDK or cryptography another needs. Errors map to exit codes in one place (buildkit.cli.run).
`verify artifact` is buildkit.cli.gate's, forwarded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from buildkit import device
    from buildkit.context import BuildContext
    from buildkit.package import PackageResult
    from buildkit.recipe import Recipe
    from buildkit.smoke.results import SmokeResult
    from buildkit.source import SourcePolicy

from buildkit.attest.cli import verifier_app
from buildkit.cli.gate import SUMMARY as GATE_SUMMARY
from buildkit.cli.gate import verify_artifact as verify_artifact_argv
from buildkit.cli.run import run_stage
from buildkit.errors import EXIT_CODES, EXIT_VIOLATION, UserError
from buildkit.progress import step

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
app.add_typer(verifier_app, name="verifier")


class TextOrJson(StrEnum):
    text = "text"
    json = "json"


@verify_app.command(
    "artifact",
    help=GATE_SUMMARY,
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def verify_artifact(ctx: typer.Context) -> None:
    verify_artifact_argv(ctx.args)


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
    pkcs11: Annotated[
        str | None,
        typer.Option(
            "--pkcs11",
            metavar="URI",
            help="Generate the key in a PKCS#11 token instead (non-extractable; CKA_ID = the key id), e.g. "
            "'pkcs11:token=buildkit;object=release?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:pin'; "
            "only the public key is written.",
        ),
    ] = None,
) -> None:
    """Create an Ed25519 key pair in minisign's formats. Never overwrites an existing key."""
    from buildkit import sign

    def action() -> None:
        if pkcs11 is not None:
            _keygen_in_token(pkcs11, public_key, comment, unencrypted or passphrase_file is not None)
            return
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

    run_stage(action)


def _keygen_in_token(uri: str, public_key: Path, comment: str, file_options: bool) -> None:
    from buildkit.keys.signer import token_keygen
    from buildkit.keys.uri import parse_pkcs11_uri

    if file_options:
        raise UserError("--pkcs11 keeps the secret key in the token: --unencrypted and --passphrase-file do not apply")
    public = token_keygen(uri, public_key, comment)
    named = dataclasses.replace(parse_pkcs11_uri(uri), key_id=public.keynum, object_type="private")
    typer.echo(f"secret key: in {named.token_text()}, {named.key_text()} (non-extractable)")
    typer.echo(f"public key: {public_key} (key id {public.key_id})")
    typer.echo(f"sign with: --key '{named.redacted()}'")


KeyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        help="Secret key file or pkcs11: URI (RFC 7512: token=, object=, id=, module-path=, pin-source=); repeatable: "
        "the first key's signature is FILE.minisig, each further key's FILE.<KEYID>.minisig.",
    ),
]


@app.command("sign")
def sign_files(
    files: Annotated[list[Path], typer.Argument(help="Files to sign; each gets FILE.minisig beside it.")],
    key: KeyOption = None,
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
        signers = sign.resolve_signers(key or [], passphrase_file, dev_key_dir=None, allow_insecure=allow_insecure_key)
        for file in files:
            for index, signer in enumerate(signers):
                typer.echo(sign.sign_file(file, signer, trusted_comment, primary=index == 0))

    run_stage(action)


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

    run_stage(action)


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
        float | None,
        typer.Option(
            help="Seconds the payload may take to answer after its start (--system: after qemu starts).", min=1
        ),
    ] = None,
    system: Annotated[
        bool,
        typer.Option(
            "--system",
            help="Boot the card on an emulated Pi 1 (qemu-system-arm, Debian's Pi 1 kernel, OpenRC) instead; "
            "TARGET may also be a card image of `buildkit image`. The guest's console log is saved beside the report.",
        ),
    ] = False,
) -> None:
    """Boot the package the way the Pi would, emulated (root): the platform checks (gates, sandbox, firewall, CPU,
    SIGTERM, tamper) and the checks of the recipe's smoke table. Exit 1 when a check fails."""
    from buildkit.smoke import emit_smoke, smoke

    def action() -> None:
        if system:
            result = _smoke_system(target, timeout, output)
        else:
            with _smoke_target(target) as out_dir:
                result = smoke(out_dir, timeout=timeout or 60.0)
        emit_smoke(result, fmt.value, output)
        if not result.ok:
            raise SystemExit(EXIT_VIOLATION)

    run_stage(action)


def _smoke_system(target: Path, timeout: float | None, output: Path | None) -> SmokeResult:
    """`smoke --system`: a card image as it is, an OUT_DIR or a recipe as `_smoke_target` gives it;
    the console log goes beside the report (or beside the target without --output)."""
    from buildkit.smoke.system import DEFAULT_TIMEOUT, require_system_host, smoke_system

    beside = output if output is not None else target.absolute()
    console_log = beside.with_name(f"{beside.stem if output is not None else beside.name}.console.log")
    if target.is_file():
        result = smoke_system(target, timeout or DEFAULT_TIMEOUT, console_log)
    else:
        with _smoke_target(target, require_system_host) as out_dir:
            result = smoke_system(out_dir, timeout or DEFAULT_TIMEOUT, console_log)
    print(f"console log: {console_log}", file=sys.stderr)
    return result


@contextlib.contextmanager
def _smoke_target(target: Path, require: Callable[[], None] | None = None) -> Iterator[Path]:
    """`target` itself when `buildkit package` wrote it; a recipe is packaged first, with the key in
    $BUILDKIT_KEY or the development key, into a temporary directory removed afterwards."""
    import tempfile

    from buildkit.recipe import RECIPE_FILE
    from buildkit.smoke import MANIFEST, require_host

    (require or require_host)()  # before a package is built for nothing
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
RegistryOption = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="Registry URL: sqlite:///PATH or postgresql://... (default: $BUILDKIT_REGISTRY, else "
        "sqlite:///<project>/.buildkit/registry.sqlite).",
    ),
]


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
    keys: Sequence[str] | None,
    passphrase_file: Path | None,
    source: SourcePolicy | None = None,
    allow_insecure_key: bool = False,
    trust: Sequence[Path] = (),
) -> PackageResult:
    """Build, gate, sign and package; says which keys signed and which the device trusts."""
    from buildkit.package import package_recipe
    from buildkit.sign import load_public_key, resolve_signers

    ctx = _context(recipe, out, source)
    trusted = [load_public_key(path) for path in trust]
    signers = resolve_signers(keys or [], passphrase_file, ctx.dev_key_dir, allow_insecure=allow_insecure_key)
    typer.echo(f"buildkit: signing with key {', '.join(signer.key_id for signer in signers)}", err=True)
    return package_recipe(ctx, signers, trusted)


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

    run_stage(action)


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

    run_stage(action)


@app.command("inspect")
def inspect_command(
    out_dir: Annotated[Path, typer.Argument(help="What `buildkit package` wrote (OUT_DIR).")],
    fmt: Annotated[TextOrJson, typer.Option("--format", help="Report format.")] = TextOrJson.text,
) -> None:
    """What a package holds and what it costs: sizes by directory, Debian package, wheel and Go module; the gate
    verdict and waivers; the signature and key id; the overlay's services and firewall. Exit 1: the signature does
    not verify, the overlay trusts another key, or the gate failed."""
    import json

    from buildkit.inspect import inspect_package, inspection_ok, render_text

    def action() -> None:
        report = inspect_package(out_dir)
        typer.echo(json.dumps(report, indent=2, sort_keys=True) if fmt is TextOrJson.json else render_text(report))
        if not inspection_ok(report):
            raise SystemExit(EXIT_VIOLATION)

    run_stage(action)


@app.command("image")
def image_command(
    out_dir: Annotated[Path, typer.Argument(help="What `buildkit package` wrote (OUT_DIR).")],
    alpine: Annotated[
        Path, typer.Option(help="Alpine's Raspberry Pi release tarball (alpine-rpi-<version>-armhf.tar.gz).")
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The SD card image to write.")] = None,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Write the card's files into this empty directory (a mounted card).")
    ] = None,
    alpine_sha256: Annotated[
        str | None, typer.Option(help="The tarball's sha256 (default: from TARBALL.sha256 beside it).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Add this device's card files (OUT_DIR/devices/HOSTNAME/).")
    ] = None,
    size: Annotated[str, typer.Option(help="The image's size (256M, 1G, ...), rounded up to 4 MiB.")] = "256M",
    apk_repo: Annotated[
        list[str] | None,
        typer.Option(
            help="An apk repository (mirror URL or directory holding <arch>/APKINDEX.tar.gz; {version} becomes the "
            "tarball's v3.X); repeatable. Default: the tarball's own apks/."
        ),
    ] = None,
    apk_keys: Annotated[
        Path | None, typer.Option(help="Trust these RSA keys for the indexes instead of Alpine's (verify/alpine-keys).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="The package's profile, by name or TOML file (default: the one its manifest names)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
    registry_url: Annotated[
        str | None,
        typer.Option("--registry", help="With --device: record the card's files there (default: the project's)."),
    ] = None,
) -> None:
    """Write an SD card for a package: Alpine's boot files, the apkovl, the payload image, the signed manifest, the
    device's card files and a boot repository with every package the overlay's world needs. Exit 1: the arch gate
    refused a package; 2: bad input (a package no repository has, an index or package that does not verify)."""
    import dataclasses
    import json

    from buildkit.image import build_image
    from buildkit.source import SIZE_RE, SIZE_UNITS

    def action() -> None:
        match = SIZE_RE.fullmatch(size.strip())
        if not match or int(match.group(1)) < 1:
            raise UserError(f"--size {size!r}: expected a size such as 256M or 1G")
        result = build_image(
            out_dir,
            alpine,
            output=output,
            directory=directory,
            alpine_sha256=alpine_sha256,
            device=device,
            size=int(match.group(1)) * SIZE_UNITS[match.group(2).lower()],
            apk_repos=apk_repo or (),
            apk_keys=apk_keys,
            profile=profile,
        )
        if device is not None:
            _record_card(device, result.file_sha256, result.file_size, registry_url)
        if as_json:
            typer.echo(json.dumps(dataclasses.asdict(result), indent=2, sort_keys=True, default=str))
            return
        where = result.image or result.directory
        typer.echo(f"card: {where}" + (f" ({result.size >> 20} MiB, sha256 {result.sha256})" if result.image else ""))
        typer.echo(f"cmdline.txt: {result.cmdline}")
        typer.echo(f"boot repository: {', '.join(p.name for p in result.packages)}")

    run_stage(action)


def _record_card(hostname: str, sha256: dict[str, str], size: dict[str, int], registry_url: str | None) -> None:
    """The device's registry record pins every file of its card, so that its verifier compares them
    rather than trusting them on first use. A device the registry did not provision gets a note."""
    from buildkit.context import project_root
    from buildkit.registry import CardFile, default_url, open_registry, registry_exists

    url = registry_url or default_url(project_root(Path.cwd()))
    if registry_exists(url):
        with open_registry(url) as registry:
            record = registry.find_device(hostname)
            if record is not None and record.provisioning is not None:
                files = [CardFile(path, sha256[path], size[path]) for path in sorted(sha256)]
                added = registry.add_card_files(hostname, files)
                typer.echo(f"buildkit: device {hostname}: {added} more card files recorded in {registry.url}", err=True)
                return
    typer.echo(
        f"buildkit: device {hostname} was not provisioned in the registry: its card files are not recorded, "
        "and a verifier will trust them on first use",
        err=True,
    )


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
            raise SystemExit(EXIT_VIOLATION)

    run_stage(action)


@app.command("package")
def package_command(
    recipe: RecipeArgument,
    out: OutOption = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            help="Secret key file or pkcs11: URI (default: $BUILDKIT_KEY, else a development key in the project's "
            ".buildkit/dev-key/); repeatable, for key rotation: every key signs the manifest "
            "(manifest.json.minisig, then manifest.json.<KEYID>.minisig).",
        ),
    ] = None,
    trust: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust",
            metavar="PUB",
            help="A public key the device accepts the manifest from (repeatable; default: the signing keys). "
            "The first --key must be trusted.",
        ),
    ] = None,
    passphrase_file: PassphraseFileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
    allow_source_outside: AllowSourceOutsideOption = None,
    max_source_size: MaxSourceSizeOption = DEFAULT_MAX_SOURCE_SIZE,
    allow_insecure_key: AllowInsecureKeyOption = False,
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="Also write this registered device's card files (identity, secrets) to OUT/devices/HOSTNAME/.",
        ),
    ] = None,
    registry: RegistryOption = None,
) -> None:
    """Build, gate, sign and package a recipe: apkovl, payload image, signed manifest. Exit 1: the gate refused it."""
    import json

    def action() -> None:
        source = _source_policy(allow_source_outside, max_source_size)
        card = _device_card(recipe, out, source, device, registry) if device else None
        result = _package(recipe, out, key, passphrase_file, source, allow_insecure_key, trust or ())
        written = {
            "apkovl": result.apkovl,
            "payload_image": result.payload_image,
            "manifest": result.manifest,
            "signature": result.signature,
            "public_key": result.public_key,
            "sdcard": result.sdcard_readme,
            **({"sbom": result.sbom} if result.sbom else {}),
        }
        if card is not None:
            written["device_card"] = card(result)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        **{k: str(v) for k, v in written.items()},
                        "manifest_sha256": result.manifest_sha256,
                        "key_id": result.key_id,
                        "key_ids": list(result.key_ids),
                        "signatures": [str(path) for path in result.signatures],
                        "trusted_key_ids": list(result.trusted_key_ids),
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
            f"signed by key {', '.join(result.key_ids)} (device trusts {', '.join(result.trusted_key_ids)}); "
            f"manifest sha256 {result.manifest_sha256}; "
            f"gate {result.build.gate.verdict}; SOURCE_DATE_EPOCH {result.source_date_epoch}"
        )

    run_stage(action)


@app.command("flash")
def flash_command(
    image: Annotated[Path, typer.Argument(help="The card image (`buildkit image ... -o card.img`).")],
    device: Annotated[Path, typer.Argument(help="The whole card, e.g. /dev/sdX or /dev/mmcblk0.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before writing (for scripts).")] = False,
) -> None:
    """Write a card image to a whole block device and read it back. Exit 1: the read-back differs; 2: refused."""
    from buildkit import flash

    def action() -> None:
        plan = flash.plan_flash(image, device)
        if not yes and not _confirmed(plan.question()):
            raise UserError(f"{device}: not confirmed, nothing was written (--yes writes without asking)")
        result = flash.flash_image(plan)
        typer.echo(
            f"{device}: wrote and read back {result.plan.image_size} bytes, sha256 {result.sha256} "
            f"(write {result.write_seconds:.1f} s, read-back {result.verify_seconds:.1f} s)"
        )

    run_stage(action)


def _confirmed(question: str) -> bool:
    """The user's answer; no answer (end of input, Ctrl-C at the prompt) is a no."""
    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:
        return False


# ---------------------------------------------------------------------------------------------
# Devices and the provisioning registry

device_app = typer.Typer(
    help="Devices: identity keys, generated secrets and the provisioning registry.", no_args_is_help=True
)
app.add_typer(device_app, name="device")


TextOrJsonOption = Annotated[TextOrJson, typer.Option("--format", help="Output format.")]


def _device_card(
    recipe: Path, out: Path | None, source: SourcePolicy, hostname: str, registry_url: str | None
) -> Callable[[PackageResult], Path]:
    """Before the build: the device may be provisioned and its identity is here. Returns what writes
    and records its card files once the package is made."""
    from buildkit import device, layout
    from buildkit.registry import default_url, open_registry

    ctx = _context(recipe, out, source)
    registry = open_registry(registry_url or default_url(ctx.project_root))
    root = device.state_root(ctx.project_root)
    device.check_card(registry, root, ctx.recipe, hostname)

    def provision(result: PackageResult) -> Path:
        shared = (
            result.apkovl,
            result.payload_image,
            result.manifest,
            *sorted(result.out_dir.glob(layout.SIGNATURE_GLOB)),
        )
        with registry:
            record, card_dir = device.provision(
                registry, root, result.recipe, hostname, result.out_dir, shared, result.manifest_sha256, result.key_id
            )
        typer.echo(
            f"buildkit: device {hostname}: {len(record.card_files)} card files recorded in {registry.url}", err=True
        )
        return card_dir

    return provision


def _device_places(recipe: Path | None, registry_url: str | None) -> tuple[str, Path, Recipe | None]:
    """The registry URL, the device state root and the recipe: all in the recipe's project, else in
    the current directory's."""
    from buildkit import device
    from buildkit.context import project_root
    from buildkit.recipe import load_recipe
    from buildkit.registry import default_url

    loaded = load_recipe(recipe) if recipe is not None else None
    root = project_root(loaded.path.parent if loaded else Path.cwd())
    return registry_url or default_url(root), device.state_root(root), loaded


@device_app.command("add")
def device_add(
    hostname: Annotated[str, typer.Argument(help="The device's name in the registry (a DNS label).")],
    serial: Annotated[str | None, typer.Option(help="The board's serial (/proc/cpuinfo Serial); never reused.")] = None,
    mac: Annotated[list[str] | None, typer.Option(help="A MAC address of the device; repeatable.")] = None,
    sd_cid: Annotated[str | None, typer.Option(help="The SD card's CID (/sys/block/mmcblk0/device/cid).")] = None,
    board_revision: Annotated[str | None, typer.Option(help="/proc/cpuinfo Revision, e.g. 000e.")] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Generate the recipe's [secrets.*] now (else at `package --device`).")
    ] = None,
    secret: Annotated[
        list[str] | None, typer.Option(help="NAME=FILE: take secret NAME from FILE instead of random; repeatable.")
    ] = None,
    registry: RegistryOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be written; write nothing.")] = False,
    fmt: TextOrJsonOption = TextOrJson.text,
) -> None:
    """Create a device: an Ed25519 identity key pair, its secrets, and its record (state provisioned). A revoked
    hostname, or a serial, MAC or key already recorded, is refused (exit 2)."""
    import json

    from buildkit import device
    from buildkit.registry import open_registry, record_dict, registry_exists

    def action() -> None:
        url, root, loaded = _device_places(recipe, registry)
        request = device.device_request(hostname, serial, mac or (), sd_cid, board_revision, loaded, secret or ())
        plan = device.plan_add(request, root)
        if dry_run:
            if registry_exists(url):
                with open_registry(url) as reg:
                    device.check_add(plan, reg)
            else:
                device.check_add(plan, None)
            _echo_plan(plan, url, fmt)
            return
        with open_registry(url) as reg:
            record = device.add_device(plan, reg)
        if fmt is TextOrJson.json:
            typer.echo(json.dumps(record_dict(record), indent=2, sort_keys=True))
            return
        typer.echo(f"device {record.hostname}: {record.state}, identity key id {record.key_id}")
        typer.echo(f"secret material: {plan.state.directory} (0700; never in the overlay, payload or registry)")
        typer.echo(f"registry: {url}")
        typer.echo(f"next: buildkit package RECIPE --device {record.hostname}")

    run_stage(action)


def _echo_plan(plan: device.AddPlan, url: str, fmt: TextOrJson) -> None:
    import json

    request = plan.request
    record = {
        "hostname": request.hostname,
        "state": "provisioned",
        "serial": request.serial,
        "macs": list(request.macs),
        "sd_cid": request.sd_cid,
        "board_revision": request.board_revision,
        "key_id": None,  # a new key pair is made only by the real run
    }
    if fmt is TextOrJson.json:
        summary = {"dry_run": True, "registry": url, "record": record, "files": [str(f) for f in plan.files]}
        typer.echo(json.dumps({**summary, "secrets": dict(plan.secrets)}, indent=2, sort_keys=True))
        return
    typer.echo(f"dry run: nothing written. Would record device {request.hostname} (state provisioned) in {url}")
    for what in ("serial", "macs", "sd_cid", "board_revision"):
        value = record[what]
        typer.echo(f"  {what}: {', '.join(value) if isinstance(value, list) else value or '-'}")
    typer.echo("  identity: a new Ed25519 key pair (minisign format); its key id is made by the real run")
    for file in plan.files:
        typer.echo(f"would write {file}")
    for name, source in sorted(plan.secrets.items()):
        typer.echo(f"  secret {name}: {source}")


@device_app.command("list")
def device_list(registry: RegistryOption = None, fmt: TextOrJsonOption = TextOrJson.text) -> None:
    """The registered devices, revoked ones included."""
    import json

    from buildkit.registry import open_registry, record_dict

    def action() -> None:
        url, _, _ = _device_places(None, registry)
        with open_registry(url) as reg:
            records = reg.devices()
        if fmt is TextOrJson.json:
            typer.echo(json.dumps([record_dict(r) for r in records], indent=2, sort_keys=True))
            return
        for r in records:
            release = f"{r.recipe_name} {r.recipe_version}" if r.provisioning else "not packaged yet"
            typer.echo(f"{r.hostname}\t{r.state}\tkey {r.key_id}\tserial {r.serial or '-'}\t{release}")
        if not records:
            typer.echo(f"no devices in {url}")

    run_stage(action)


@device_app.command("show")
def device_show(
    hostname: Annotated[str, typer.Argument(help="The device.")],
    registry: RegistryOption = None,
    fmt: TextOrJsonOption = TextOrJson.text,
) -> None:
    """One device: its record, latest card files and state history."""
    import json

    from buildkit.registry import change_dict, open_registry, record_dict

    def action() -> None:
        url, _, _ = _device_places(None, registry)
        with open_registry(url) as reg:
            record, history = reg.device(hostname), reg.history(hostname)
        data = {**record_dict(record), "history": [change_dict(c) for c in history]}
        if fmt is TextOrJson.json:
            typer.echo(json.dumps(data, indent=2, sort_keys=True))
            return
        for key in ("hostname", "state", "state_reason", "serial", "sd_cid", "board_revision", "key_id"):
            typer.echo(f"{key}: {data[key] or '-'}")
        typer.echo(f"macs: {', '.join(record.macs) or '-'}")
        typer.echo(f"fingerprint: sha256:{record.fingerprint}")
        if record.provisioning:
            p = record.provisioning
            typer.echo(f"recipe: {p.recipe_name} {p.recipe_version}; manifest sha256 {p.manifest_sha256}")
            typer.echo(f"signed by key {p.signing_key_id}; provisioned {p.provisioned_at} by {p.provisioned_by}")
            for path, sha256 in sorted(record.card_files.items()):
                typer.echo(f"  {sha256}  {path}")
        for c in history:
            typer.echo(f"{c.at} {c.from_state or '-'} -> {c.to_state} by {c.actor}: {c.reason}")

    run_stage(action)


@device_app.command("revoke")
def device_revoke(
    hostname: Annotated[str, typer.Argument(help="The device.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the device's history).")],
    registry: RegistryOption = None,
) -> None:
    """Revoke a device for good: its hostname and serial are never provisioned again, and the build host's copy
    of its identity and secrets is deleted."""
    from buildkit import device
    from buildkit.registry import open_registry

    def action() -> None:
        url, root, _ = _device_places(None, registry)
        with open_registry(url) as reg:
            record = device.revoke_device(reg, root, hostname, reason)
        typer.echo(f"device {record.hostname}: revoked ({record.state_reason}); its secret material was deleted")
        typer.echo(f"remove its card files wherever they were copied (OUT/devices/{record.hostname}/)")

    run_stage(action)


@device_app.command("export")
def device_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON (atomically).")],
    registry: RegistryOption = None,
) -> None:
    """The whole registry as JSON for an auditor: devices, card file hashes, provisionings and state history."""
    import json

    from buildkit.fsutil import write_bytes_atomic
    from buildkit.registry import open_registry

    def action() -> None:
        url, _, _ = _device_places(None, registry)
        with open_registry(url) as reg:
            data = reg.export()
        write_bytes_atomic(output, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
        typer.echo(f"{output}: {len(data['devices'])} device(s) from {url}")

    run_stage(action)
