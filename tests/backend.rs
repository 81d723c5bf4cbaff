//! Choosing a backend at run time.

use ddpm::backend::{Backend, BackendError, probe};

#[test]
fn backends_parse_and_report_what_is_compiled_in() {
    assert_eq!("flex".parse::<Backend>().unwrap(), Backend::Flex);
    assert_eq!("WGPU".parse::<Backend>().unwrap(), Backend::Wgpu);
    assert!(matches!(
        "tpu".parse::<Backend>(),
        Err(BackendError::Unknown(_))
    ));
    // The default build has flex, and flex answers.
    assert_eq!(Backend::default_compiled(), Some(Backend::Flex));
    let device = Backend::Flex.device().unwrap();
    assert!(probe(&device).is_ok());
    // A backend that is not compiled in is an error that says how to enable it.
    if !Backend::compiled().contains(&Backend::Cuda) {
        let e = Backend::Cuda.device().unwrap_err();
        assert!(matches!(e, BackendError::NotCompiled(Backend::Cuda, _)));
        assert!(e.to_string().contains("--features cuda"), "{e}");
    }
}
