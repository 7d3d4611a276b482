//! A Dockerfile cannot make berth read or write the host through symlinks it plants in
//! the image: COPY destinations, COPY --from sources and heredoc files all resolve
//! inside the image, as they would inside a container.

mod common;

use std::process::Command;

use common::*;

#[test]
fn symlinks_in_the_image_stay_in_the_image() {
    let root_ok = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(root_ok || skip("berth build needs root")) || !require("runc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("busybox");
    busybox_layout(&layout, "v1");
    let marker = format!("berth-containment-{}", std::process::id());
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("payload/host/tmp")).unwrap();
    std::fs::write(
        ctx.join("payload/host/tmp").join(&marker),
        "written through /host",
    )
    .unwrap();
    // The host's /etc/hostname differs from anything in the busybox image. COPY's
    // destination /host/ is the link to /, followed inside the image (a folder copied
    // onto a link *below* the destination is refused, as in BuildKit: corpus case
    // copy_replace_type).
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{l}:v1 AS s\n\
             RUN ln -s / /host && ln -s /etc /leak && ln -s /tmp/{marker}-heredoc /x\n\
             COPY payload/host/ /host/\n\
             COPY <<EOF /x\nheredoc\nEOF\n\
             FROM oci-layout://{l}:v1\n\
             COPY --from=s /leak/passwd /copied-passwd\n\
             COPY --from=s /tmp/ /stage-tmp/\n",
            l = layout.display()
        ),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(berth_bin())
        .arg("--root")
        .arg(dir.path().join("root"))
        .args(["build", "--progress", "plain", "--output"])
        .arg(format!("type=local,dest={}", out_dir.display()))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "COPY wrote through /host onto the host"
    );
    assert!(
        !std::path::Path::new("/tmp")
            .join(format!("{marker}-heredoc"))
            .exists(),
        "a heredoc wrote onto the host"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("stage-tmp").join(&marker)).unwrap(),
        "written through /host"
    );
    let passwd = std::fs::read_to_string(out_dir.join("copied-passwd")).unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/bin/sh\nnobody:"),
        "the image's passwd, not the host's: {passwd}"
    );
}
