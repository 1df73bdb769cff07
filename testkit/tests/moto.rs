//! The moto fixture starts a real moto server that answers the Auto Scaling API.

use causeway_testkit::{moto, raw};

#[tokio::test]
async fn moto_answers_describe_auto_scaling_groups() {
    let Some(m) = moto::start() else { return };
    let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/autoscaling/aws4_request, SignedHeaders=host, Signature=0";
    let r = raw::request(
        m.addr(),
        "POST",
        "/",
        &[
            ("Authorization", auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"Action=DescribeAutoScalingGroups&Version=2011-01-01",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<DescribeAutoScalingGroupsResponse"),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("<AutoScalingGroups/>"),
        "a fresh moto has no groups"
    );
}
