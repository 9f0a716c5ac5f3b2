//! The real image path, end to end: the project's `Containerfile` built with
//! buildah on a Debian base made by debootstrap (with the fake actions runner's
//! tarball), converted by `orchestrator image bundle --oci` into a root disk and
//! a stage-1 initramfs, booted under QEMU (TCG) with a per-VM overlay and a
//! scratch disk, running one job from the local forge; then `image prune`.
//!
//! buildah works in a storage of the test's own (CONTAINERS_STORAGE_CONF), so
//! neither the images nor the prune touch the developer's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{bin, World, PAT, REPO};
use ghrm::localforge::JobStatus;

const GUEST_FORGE: &str = "10.0.2.100:80";
const RUNNER_DIR: &str = "/opt/gh-runner-microvm/share/runner/runner-2.330.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path), "sha256sum")
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// buildah images (names) in the test's storage.
fn image_names(w: &World) -> Vec<String> {
    run(
        buildah(w).args(["images", "--format", "{{.Name}}:{{.Tag}}"]),
        "buildah images",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// A host tool with the test's environment additions (its buildah storage, PATH).
fn tool(w: &World, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.envs(w.env.lock().unwrap().iter().cloned());
    c
}

fn buildah(w: &World) -> Command {
    tool(w, "buildah")
}

/// A job that reports, from inside the guest, what the image and disks look like.
fn disk_facts() -> String {
    format!(
        r#"R={RUNNER_DIR}
echo "entrypoint-pid=$(awk '{{print $4}}' /proc/$PPID/stat)"
echo "user=$(id -u)"
echo "os=$(. /etc/os-release; echo "$ID-$VERSION_ID")"
echo "su=$(stat -c %a:%U /usr/bin/su)"
echo "root=$(awk '$2=="/"{{print $1" "$3}}' /proc/mounts | tail -n1)"
echo "scratch=$(awk '$2=="/_work"{{print $3}}' /proc/mounts)"
echo "work-bound=$(awk -v d="$R/_work" '$2==d{{print $3}}' /proc/mounts)"
echo job-file > "$R/_work/job-file"
echo "work-dev-differs=$([ "$(stat -c %d "$R/_work/job-file")" != "$(stat -c %d /)" ] && echo yes)"
echo "work-kib=$(df -k --output=size /_work | tail -n1 | tr -d ' ')"
echo overlay > "$R/written-into-the-image" && echo overlay-write=ok
echo facts-done
"#
    )
}

#[test]
fn an_oci_image_boots_under_qemu_and_runs_a_job_then_prune_removes_it() {
    let w = World::new();
    // buildah's storage and our cache, private to this test.
    let storage = w.dir.path().join("containers");
    std::fs::create_dir_all(&storage).unwrap();
    let conf = w.dir.path().join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
            storage.display()
        ),
    )
    .unwrap();
    let scratch = w.dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    w.env.lock().unwrap().extend([
        ("CONTAINERS_STORAGE_CONF".into(), conf.display().to_string()),
        ("GHRM_SCRATCH_DIR".into(), scratch.display().to_string()),
        // The real buildah, not the stand-in of the krunvm tests.
        (
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
        ),
    ]);
    // Teardown on every path: nothing of buildah's may stay mounted in the tempdir.
    struct Storage(Command);
    impl Drop for Storage {
        fn drop(&mut self) {
            let _ = self.0.output();
        }
    }
    let mut rm_all = buildah(&w);
    rm_all.args(["rm", "--all"]);
    let _storage = Storage(rm_all);

    // 1. The base: Debian by debootstrap (cached), imported into the test's storage.
    let base = "localhost/ghrm-test-debian:bookworm";
    run(
        tool(&w, repo().join("scripts/debian-base.sh")).arg(base),
        "scripts/debian-base.sh",
    );

    // 2. The runner image from the project's Containerfile, with the fake runner.
    let ctx = w.dir.path().join("context");
    std::fs::create_dir_all(ctx.join("image")).unwrap();
    std::fs::copy(repo().join("Containerfile"), ctx.join("Containerfile")).unwrap();
    for f in ["install-runner.sh", "no-runner-tarball"] {
        std::fs::copy(repo().join("image").join(f), ctx.join("image").join(f)).unwrap();
    }
    std::fs::copy(bin("entrypoint"), ctx.join("entrypoint")).unwrap();
    let tgz =
        ghrm::image::fake_runner_tarball(&bin("fake-runner-listener"), &ctx, "2.330.0").unwrap();
    let image = "localhost/ghrm-test-runner:latest";
    let build = |tag: &str, sha: &str| {
        buildah(&w)
            .args(["bud", "--isolation", "chroot", "--quiet"])
            .args([
                "--build-arg",
                &format!("BASE_IMAGE={base}"),
                "--build-arg",
                "ENTRYPOINT=entrypoint",
                "--build-arg",
                &format!(
                    "RUNNER_TARBALL={}",
                    tgz.file_name().unwrap().to_string_lossy()
                ),
                "--build-arg",
                &format!("RUNNER_TARBALL_SHA256={sha}"),
                "--build-arg",
                "TARGETARCH=amd64",
                "-t",
                tag,
                "-f",
            ])
            .arg(ctx.join("Containerfile"))
            .arg(&ctx)
            .output()
            .unwrap()
    };
    // A tarball that does not match its checksum is refused.
    let bad = build("localhost/ghrm-test-bad:latest", &"0".repeat(64));
    assert!(!bad.status.success(), "a wrong checksum was accepted");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let good = build(image, &sha256(&tgz));
    assert!(
        good.status.success(),
        "buildah bud (Containerfile): {}",
        String::from_utf8_lossy(&good.stderr)
    );

    // 3. image bundle --oci, twice: the second reuses the converted disk.
    let kernel = run(
        &mut Command::new(repo().join("scripts/fetch-kernel.sh")),
        "scripts/fetch-kernel.sh",
    );
    let kdir = PathBuf::from(kernel.trim());
    let bundle = w.dir.path().join("bundle");
    let bundle_cmd = || {
        let mut c = w.command("orchestrator");
        c.args(["image", "bundle", "--oci", image, "--kernel"])
            .arg(kdir.join("vmlinuz"))
            .arg("--modules")
            .arg(kdir.join("modules"))
            .arg("--out")
            .arg(&bundle);
        c
    };
    let said = run(&mut bundle_cmd(), "image bundle --oci");
    assert!(said.contains("root disk"), "{said}");
    let info = ghrm::image::BundleInfo::load(&bundle).unwrap();
    let root = info.root.clone().expect("a root-disk bundle");
    assert_eq!(root.init, "/opt/gh-runner-microvm/bin/entrypoint");
    // The uncompressed kernel for a PVH boot, as in parts bundles.
    assert_eq!(info.vmlinux.as_deref(), Some("vmlinux"));
    assert!(bundle.join("vmlinux").is_file());
    assert!(root.disk.starts_with(w.dir.path()), "{root:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&root.disk.metadata().unwrap().permissions());
    assert_eq!(mode & 0o777, 0o444, "the converted disk must be read-only");
    let inode = std::os::unix::fs::MetadataExt::ino(&root.disk.metadata().unwrap());
    run(&mut bundle_cmd(), "image bundle --oci (cached)");
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&root.disk.metadata().unwrap()),
        inode,
        "the cached disk was converted again"
    );
    let before = sha256(&root.disk);

    // 4. One job in a VM booted from that disk.
    w.forge.queue_job(REPO, &["microvm"], &disk_facts());
    let port = w.forge.addr().port();
    w.forge.set_runner_url(&format!("http://{GUEST_FORGE}"));
    let url = w.forge.url();
    let forward = format!("{GUEST_FORGE}=127.0.0.1:{port}");
    let bundle_s = bundle.display().to_string();
    // `runner -R qemu` for one job, the forge reachable only through one forward.
    let one_job = |extra: &[&str]| {
        let mut args = vec![
            "-R",
            "qemu",
            "-i",
            &bundle_s,
            "--accel",
            "tcg",
            "--net",
            "restricted",
            "--net-forward",
            &forward,
            "-m",
            "512",
            "-c",
            "1",
            "-T",
            PAT,
            "-g",
            &url,
            "-p",
            REPO,
            "-r",
            "1",
        ];
        args.extend_from_slice(extra);
        w.spawn("runner", &args)
    };
    // Restored from a snapshot template saved before stage 1 mounted any disk: the
    // fresh overlay and scratch disk of the restored VM are all it knows of them.
    let mut p = one_job(&["--scratch-size", "256M", "--start", "snapshot"]);
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        log.contains("restored from the snapshot template"),
        "not restored:\n{log}"
    );
    let jobs = w.forge.jobs();
    assert_eq!(jobs.len(), 1);
    let j = &jobs[0];
    assert_eq!(j.status, JobStatus::Completed, "{log}");
    assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
    let out = &j.output;
    for want in [
        "entrypoint-pid=1\n",
        "user=1001\n",
        "os=debian-12\n",
        // Ownership and setuid bits of the image survive the conversion.
        "su=4755:root\n",
        "root=/dev/vd",
        "scratch=ext4\n",
        "work-bound=ext4\n",
        "work-dev-differs=yes\n",
        "overlay-write=ok\n",
        "facts-done\n",
    ] {
        assert!(
            out.contains(want),
            "{want:?} not in the job's output:\n{out}\n{log}"
        );
    }
    let kib: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("work-kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (200_000..=262_144).contains(&kib),
        "the scratch disk is not the --scratch-size one: {kib} KiB"
    );
    assert!(
        out.contains("root=/dev/vd") && out.contains(" ext4"),
        "{out}"
    );
    // The job wrote into the image's file system: the base disk did not change.
    assert_eq!(sha256(&root.disk), before, "the base disk changed");
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "scratch disks left: {left:?}");
    let procs = w.wait_no_processes(Duration::from_secs(5));
    assert!(procs.is_empty(), "{procs:?}");

    // 4b. -D /local against the real image: the image and its disk stay as they are,
    // the freshly built entrypoint (the directory of ours) runs as PID 1 after stage 1.
    w.forge.queue_job(
        REPO,
        &["microvm"],
        "echo \"pid1=$(tr '\\0' '\\n' < /proc/1/cmdline | head -n1)\"; echo \"os=$(. /etc/os-release; echo $ID)\"",
    );
    let dev = bin("entrypoint").parent().unwrap().display().to_string();
    let mut p = one_job(&["--scratch-size", "0", "-D", "/local", "--dev-dir", &dev]);
    let st = p.finish(Duration::from_secs(300));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let j = &w.forge.jobs()[1];
    assert_eq!(j.exit_code, Some(0), "{}\n{log}", j.output);
    assert!(
        j.output.contains("pid1=/local/entrypoint\n") && j.output.contains("os=debian"),
        "not the dev entrypoint in the image:\n{}\n{log}",
        j.output
    );
    assert_eq!(sha256(&root.disk), before, "the base disk changed");

    // 5. prune: our image, disk and bundle go; the foreign base stays.
    let out = run(
        w.command("orchestrator").args(["image", "prune"]),
        "image prune",
    );
    assert!(out.contains(&format!("removed image {image}")), "{out}");
    let names = image_names(&w);
    assert!(
        !names.iter().any(|n| n.contains("ghrm-test-runner")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == base),
        "prune removed a foreign image: {names:?}"
    );
    assert!(!root.disk.exists(), "the converted disk is still there");
    assert!(
        !bundle.join("bundle.json").exists() && !bundle.join("vmlinux").exists(),
        "the bundle is still there"
    );
    let containers = run(
        buildah(&w).args(["containers", "--all", "--quiet"]),
        "buildah containers",
    );
    assert!(containers.trim().is_empty(), "{containers}");
    // --all: the foreign one too.
    let out = run(
        w.command("orchestrator").args(["image", "prune", "--all"]),
        "image prune --all",
    );
    assert!(out.contains(&format!("removed image {base}")), "{out}");
    assert!(image_names(&w).is_empty(), "{:?}", image_names(&w));
}
