//! Windows enrollment: MS-MDE2 with on-premise authentication, as the built-in client
//! ("Access work or school", or the `ms-device-enrollment:` link) speaks it. Three SOAP
//! services, each a sub-path of `/agent/v1/windows/enroll/`:
//!
//! 1. `discovery` (MS-MDE2 Discover): GET answers 200; POST `Discover` is answered with
//!    the auth policy (`OnPremise`: the user types a user name and a password) and the
//!    URLs of the two services below.
//! 2. `policy` (MS-XCEP `GetPolicies`): the certificate template (RSA 2048, SHA-256).
//! 3. `enrollment` (MS-WSTEP `RequestSecurityToken`): the WS-Security password is the
//!    enrollment token, the `BinarySecurityToken` the device's PKCS#10 request and
//!    `AdditionalContext` its identity (`DeviceID`, the id its OMA-DM sessions give as
//!    Source LocURI). The host admits the device and signs the request; the answer is a
//!    `wap-provisioningdoc` that installs the device CA as a root, the device's
//!    certificate, and the management URL (`APPLICATION` w7 and `DMClient`).
//!
//! Windows then opens its OMA-DM sessions at the management URL over TLS with that
//! certificate, which the host maps to the device: no bearer token is issued.
//!
//! Faults are SOAP 1.2 faults with MS-MDE2's subcodes, sent with HTTP 500 as the WCF
//! services Windows was built against send them.

use drover_sdk::device_type::drover::plugin::types::{Enrollment, HttpMethod, HttpResponse, Ownership, PluginError};
use drover_sdk::device_type_enrolling::exports::drover::plugin::enrollment_exchange::{
    Admission, EnrollContext, Issued, Refusal, Step as EnrollStep,
};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText};
use roxmltree::{Document, Node};

const SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
const ADDRESSING: &str = "http://www.w3.org/2005/08/addressing";
const WSSE: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
const WST: &str = "http://docs.oasis-open.org/ws-sx/ws-trust/200512";
const AUTHORIZATION: &str = "http://schemas.xmlsoap.org/ws/2006/12/authorization";
const DISCOVERY_NS: &str = "http://schemas.microsoft.com/windows/management/2012/01/enrollment";
const POLICY_NS: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy";
const ENROLLMENT_NS: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment";
const PKCS10: &str = "http://schemas.microsoft.com/windows/pki/2009/01/enrollment#PKCS10";
const TOKEN_TYPE: &str = "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/DeviceEnrollmentToken";
const PROVISION_DOC: &str =
    "http://schemas.microsoft.com/5.0.0.0/ConfigurationManager/Enrollment/DeviceEnrollmentProvisionDoc";
const BASE64_BINARY: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd#base64binary";
const SOAP_CONTENT_TYPE: &str = "application/soap+xml; charset=utf-8";

/// The name Windows shows for the management server, and the DMClient provider id.
pub const PROVIDER: &str = "Drover";

/// The management URL's path under the agent base: OMA-DM sessions go here.
pub const MANAGEMENT_PATH: &str = "ManagementServer/MDM.svc";

/// Enrollment versions this server answers with, oldest first: the device's
/// `RequestVersion` when it is one of them, else the newest below it.
const VERSIONS: [&str; 5] = ["1.0", "2.0", "3.0", "4.0", "5.0"];

/// One request of the exchange.
pub fn step(context: &EnrollContext, path: &str, method: HttpMethod, body: &[u8]) -> Result<EnrollStep, PluginError> {
    let service = path.strip_prefix("enroll/").unwrap_or(path);
    match (service, method) {
        // The client first checks that the discovery URL answers at all.
        ("discovery", HttpMethod::Get | HttpMethod::Head) => Ok(EnrollStep::Reply(HttpResponse {
            status: 200,
            content_type: Some("text/html".into()),
            headers: vec![],
            body: vec![],
        })),
        (_, HttpMethod::Post) => {
            let text = match std::str::from_utf8(body) {
                Ok(t) => t,
                Err(_) => {
                    return Ok(EnrollStep::Reply(fault_reply(
                        None,
                        Subcode::MessageFormat,
                        "the request is not UTF-8 text",
                    )));
                }
            };
            let doc = match Document::parse(text) {
                Ok(d) => d,
                Err(e) => {
                    let why = format!("the request is not XML: {e}");
                    return Ok(EnrollStep::Reply(fault_reply(None, Subcode::MessageFormat, &why)));
                }
            };
            let message_id = header(&doc, ADDRESSING, "MessageID");
            let answer = match service {
                "discovery" => discover(context, &doc).map(EnrollStep::Reply),
                "policy" => Ok(EnrollStep::Reply(policies(message_id.as_deref()))),
                "enrollment" => admission(&doc).map(EnrollStep::Admit),
                _ => Err((
                    Subcode::MessageFormat,
                    format!("no enrollment service `{service}` (discovery, policy, enrollment)"),
                )),
            };
            Ok(answer.unwrap_or_else(|(code, why)| EnrollStep::Reply(fault_reply(message_id.as_deref(), code, &why))))
        }
        _ => Err(PluginError::invalid(format!(
            "enrollment services take POST (and GET at enroll/discovery); `{service}` was asked otherwise"
        ))),
    }
}

/// The answer to an admission: the provisioning document, or the fault for the refusal.
pub fn enrolled(context: &EnrollContext, body: &[u8], outcome: Result<Issued, Refusal>) -> HttpResponse {
    let doc_text = std::str::from_utf8(body).unwrap_or_default();
    let doc = Document::parse(doc_text).ok();
    let message_id = doc.as_ref().and_then(|d| header(d, ADDRESSING, "MessageID"));
    let issued = match outcome {
        Ok(issued) => issued,
        Err(refusal) => {
            let code = match (refusal.status, refusal.code.as_str()) {
                (401, _) => Subcode::Authentication,
                (_, "invalid_csr" | "too_large") => Subcode::CertificateRequest,
                (400, _) => Subcode::InvalidEnrollmentData,
                _ => Subcode::Authorization,
            };
            return fault_reply(message_id.as_deref(), code, &refusal.message);
        }
    };
    let Some(certificate) = issued.certificate.as_deref() else {
        // The enrollment request always carries a CSR (`admission` refuses one without).
        return fault_reply(message_id.as_deref(), Subcode::InternalServiceFault, "no certificate was issued");
    };
    let device_store = doc
        .as_ref()
        .and_then(|d| context_items(d).into_iter().find(|(k, _)| k == "EnrollmentType").map(|(_, v)| v))
        .is_some_and(|t| t.eq_ignore_ascii_case("Device"));
    let provisioning = provisioning_doc(context, &issued.device_id, certificate, &issued.ca_certificate, device_store);
    let mut w = writer();
    envelope(
        &mut w,
        "http://schemas.microsoft.com/windows/pki/2009/01/enrollment/RSTRC/wstep",
        message_id.as_deref(),
        |w| {
            w.create_element("RequestSecurityTokenResponseCollection")
                .with_attribute(("xmlns", WST))
                .write_inner_content(|w| {
                    w.create_element("RequestSecurityTokenResponse").write_inner_content(|w| {
                        text(w, "TokenType", TOKEN_TYPE);
                        w.create_element("DispositionMessage")
                            .with_attribute(("xmlns", ENROLLMENT_NS))
                            .write_empty()?;
                        w.create_element("RequestedSecurityToken").write_inner_content(|w| {
                            w.create_element("BinarySecurityToken")
                                .with_attributes([
                                    ("ValueType", PROVISION_DOC),
                                    ("EncodingType", BASE64_BINARY),
                                    ("xmlns", WSSE),
                                ])
                                .write_text_content(BytesText::new(&base64(&provisioning)))?;
                            Ok(())
                        })?;
                        w.create_element("RequestID")
                            .with_attribute(("xmlns", ENROLLMENT_NS))
                            .write_text_content(BytesText::new("0"))?;
                        Ok(())
                    })?;
                    Ok(())
                })?;
            Ok(())
        },
    );
    soap(200, w.into_inner())
}

/// `Discover`: on-premise authentication and the two service URLs.
fn discover(context: &EnrollContext, doc: &Document) -> Result<HttpResponse, (Subcode, String)> {
    let body = body(doc)?;
    let discover = child(body, DISCOVERY_NS, "Discover")
        .or_else(|| child(body, &format!("{DISCOVERY_NS}/"), "Discover"))
        .ok_or((Subcode::MessageFormat, "the body is not a <Discover> request".to_string()))?;
    let asked = discover
        .descendants()
        .find(|n| n.tag_name().name() == "RequestVersion")
        .and_then(|n| n.text())
        .map(str::trim)
        .unwrap_or("1.0");
    let version = VERSIONS
        .iter()
        .rev()
        .find(|v| v.parse::<f32>().unwrap_or(0.0) <= asked.parse::<f32>().unwrap_or(1.0))
        .copied()
        .unwrap_or("1.0");
    let policies: Vec<&str> = discover
        .descendants()
        .filter(|n| n.tag_name().name() == "AuthPolicy")
        .filter_map(|n| n.text().map(str::trim))
        .collect();
    if !policies.is_empty() && !policies.contains(&"OnPremise") {
        return Err((
            Subcode::NotSupported,
            format!("this server authenticates OnPremise only; the device offers {}", policies.join(", ")),
        ));
    }
    let message_id = header(doc, ADDRESSING, "MessageID");
    let base = context.agent_url.trim_end_matches('/');
    let mut w = writer();
    envelope(
        &mut w,
        "http://schemas.microsoft.com/windows/management/2012/01/enrollment/IDiscoveryService/DiscoverResponse",
        message_id.as_deref(),
        |w| {
            w.create_element("DiscoverResponse").with_attribute(("xmlns", DISCOVERY_NS)).write_inner_content(|w| {
                w.create_element("DiscoverResult").write_inner_content(|w| {
                    text(w, "AuthPolicy", "OnPremise");
                    text(w, "EnrollmentVersion", version);
                    text(w, "EnrollmentPolicyServiceUrl", &format!("{base}/enroll/policy"));
                    text(w, "EnrollmentServiceUrl", &format!("{base}/enroll/enrollment"));
                    Ok(())
                })?;
                Ok(())
            })?;
            Ok(())
        },
    );
    Ok(soap(200, w.into_inner()))
}

/// `GetPoliciesResponse`: one template, RSA keys of at least 2048 bits signed with
/// SHA-256. It discloses nothing: the credentials are checked where they are used, at
/// `enrollment`.
fn policies(message_id: Option<&str>) -> HttpResponse {
    let mut w = writer();
    envelope(
        &mut w,
        "http://schemas.microsoft.com/windows/pki/2009/01/enrollmentpolicy/IPolicy/GetPoliciesResponse",
        message_id,
        |w| {
            w.create_element("GetPoliciesResponse").with_attribute(("xmlns", POLICY_NS)).write_inner_content(|w| {
                w.create_element("response").write_inner_content(|w| {
                    w.create_element("policyID").write_empty()?;
                    nil(w, "policyFriendlyName");
                    nil(w, "nextUpdateHours");
                    nil(w, "policiesNotChanged");
                    w.create_element("policies").write_inner_content(|w| {
                        w.create_element("policy").write_inner_content(|w| {
                            text(w, "policyOIDReference", "0");
                            nil(w, "cAs");
                            w.create_element("attributes").write_inner_content(|w| {
                                text(w, "commonName", "DroverDevice");
                                text(w, "policySchema", "3");
                                w.create_element("certificateValidity").write_inner_content(|w| {
                                    text(w, "validityPeriodSeconds", "31536000");
                                    text(w, "renewalPeriodSeconds", "2592000");
                                    Ok(())
                                })?;
                                w.create_element("permission").write_inner_content(|w| {
                                    text(w, "enroll", "true");
                                    text(w, "autoEnroll", "false");
                                    Ok(())
                                })?;
                                w.create_element("privateKeyAttributes").write_inner_content(|w| {
                                    text(w, "minimalKeyLength", "2048");
                                    for n in [
                                        "keySpec",
                                        "keyUsageProperty",
                                        "permissions",
                                        "algorithmOIDReference",
                                        "cryptoProviders",
                                    ] {
                                        nil(w, n);
                                    }
                                    Ok(())
                                })?;
                                w.create_element("revision").write_inner_content(|w| {
                                    text(w, "majorRevision", "101");
                                    text(w, "minorRevision", "0");
                                    Ok(())
                                })?;
                                for n in [
                                    "supersededPolicies",
                                    "privateKeyFlags",
                                    "subjectNameFlags",
                                    "enrollmentFlags",
                                    "generalFlags",
                                ] {
                                    nil(w, n);
                                }
                                text(w, "hashAlgorithmOIDReference", "0");
                                for n in ["rARequirements", "keyArchivalAttributes", "extensions"] {
                                    nil(w, n);
                                }
                                Ok(())
                            })?;
                            Ok(())
                        })?;
                        Ok(())
                    })?;
                    Ok(())
                })?;
                nil(w, "cAs");
                w.create_element("oIDs").write_inner_content(|w| {
                    w.create_element("oID").write_inner_content(|w| {
                        text(w, "value", "2.16.840.1.101.3.4.2.1");
                        text(w, "group", "1");
                        text(w, "oIDReferenceID", "0");
                        text(w, "defaultName", "szOID_NIST_sha256");
                        Ok(())
                    })?;
                    Ok(())
                })?;
                Ok(())
            })?;
            Ok(())
        },
    );
    soap(200, w.into_inner())
}

/// `RequestSecurityToken`: the device, its token and its certificate request.
fn admission(doc: &Document) -> Result<Admission, (Subcode, String)> {
    let body = body(doc)?;
    let rst = child(body, WST, "RequestSecurityToken")
        .ok_or((Subcode::MessageFormat, "the body is not a <wst:RequestSecurityToken>".to_string()))?;
    let bst = rst
        .descendants()
        .find(|n| n.has_tag_name((WSSE, "BinarySecurityToken")))
        .ok_or((Subcode::MessageFormat, "no <wsse:BinarySecurityToken> (the certificate request)".to_string()))?;
    let value_type = bst.attribute("ValueType").unwrap_or_default();
    if value_type != PKCS10 {
        // A PKCS#7 token is a renewal signed with the old certificate, which this server
        // does not take: the device enrolls again.
        return Err((
            Subcode::NotSupported,
            format!("BinarySecurityToken ValueType `{value_type}`: this server takes a PKCS#10 request ({PKCS10})"),
        ));
    }
    let csr = unbase64(bst.text().unwrap_or_default())
        .ok_or((Subcode::CertificateRequest, "the BinarySecurityToken is not base64".to_string()))?;
    let items = context_items(doc);
    let item = |name: &str| items.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let device_id =
        item("DeviceID").ok_or((Subcode::InvalidEnrollmentData, "AdditionalContext has no `DeviceID`".to_string()))?;
    if device_id.len() > 128 || device_id.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
        return Err((
            Subcode::InvalidEnrollmentData,
            format!("DeviceID `{device_id}` is not usable (1 to 128 characters, no spaces or slashes)"),
        ));
    }
    let security = doc.descendants().find(|n| n.has_tag_name((WSSE, "Security")));
    let field = |name: &str| {
        security
            .and_then(|s| s.descendants().find(|n| n.has_tag_name((WSSE, name))))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    let metadata: Vec<(String, String)> = [
        ("OSVersion", "os_version"),
        ("OSEdition", "os_edition"),
        ("DeviceType", "device_type"),
        ("ApplicationVersion", "client_version"),
        ("HWDevID", "hw_dev_id"),
        ("EnrollmentType", "enrollment_type"),
    ]
    .iter()
    .filter_map(|(from, to)| item(from).map(|v| (to.to_string(), v)))
    .chain(["MAC", "IMEI"].iter().filter_map(|k| {
        let all: Vec<&str> = items.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect();
        (!all.is_empty()).then(|| (k.to_ascii_lowercase(), all.join(",")))
    }))
    .collect();
    Ok(Admission {
        enrollment: Enrollment {
            device_id,
            name: item("DeviceName"),
            ownership: Ownership::Cope,
            owner: field("Username"),
            metadata,
            push: None,
        },
        token: field("Password"),
        csr: Some(csr),
    })
}

/// The `wap-provisioningdoc` Windows applies: the CA as a root, the device's certificate,
/// the management server (w7 APPLICATION) and its polling schedule (DMClient).
pub fn provisioning_doc(
    context: &EnrollContext,
    device_id: &str,
    certificate: &[u8],
    ca: &[u8],
    device_store: bool,
) -> Vec<u8> {
    let store = if device_store { "System" } else { "User" };
    let address = format!("{}/{MANAGEMENT_PATH}", context.agent_url.trim_end_matches('/'));
    // The subject as the host writes it (CN = device id, OU = windows), in encoded order
    // and URL-escaped, as the criteria's own examples give it.
    let criteria = format!("Subject=CN%3d{}%2cOU%3dwindows&Stores=My%5C{store}", percent(device_id));
    let mut w = Writer::new(Vec::with_capacity(4096));
    let parm = |w: &mut Writer<Vec<u8>>, name: &str, value: Option<&str>, datatype: Option<&str>| {
        let mut e = w.create_element("parm").with_attribute(("name", name));
        if let Some(v) = value {
            e = e.with_attribute(("value", v));
        }
        if let Some(t) = datatype {
            e = e.with_attribute(("datatype", t));
        }
        e.write_empty().expect("memory");
    };
    w.create_element("wap-provisioningdoc")
        .with_attribute(("version", "1.1"))
        .write_inner_content(|w| {
            w.create_element("characteristic").with_attribute(("type", "CertificateStore")).write_inner_content(
                |w| {
                    characteristic(w, "Root", |w| {
                        characteristic(w, "System", |w| {
                            characteristic(w, &thumbprint(ca), |w| {
                                parm(w, "EncodedCertificate", Some(&base64(ca)), None);
                            });
                        });
                    });
                    characteristic(w, "My", |w| {
                        characteristic(w, store, |w| {
                            characteristic(w, &thumbprint(certificate), |w| {
                                parm(w, "EncodedCertificate", Some(&base64(certificate)), None);
                            });
                            // Present for the document's syntax: the key stays where the
                            // device made it.
                            characteristic(w, "PrivateKeyContainer", |_| {});
                        });
                    });
                    Ok(())
                },
            )?;
            characteristic(w, "APPLICATION", |w| {
                parm(w, "APPID", Some("w7"), None);
                parm(w, "PROVIDER-ID", Some(PROVIDER), None);
                parm(w, "NAME", Some(PROVIDER), None);
                parm(w, "ADDR", Some(&address), None);
                parm(w, "CONNRETRYFREQ", Some("6"), None);
                parm(w, "INITIALBACKOFFTIME", Some("30000"), None);
                parm(w, "MAXBACKOFFTIME", Some("120000"), None);
                parm(w, "BACKCOMPATRETRYDISABLED", None, None);
                parm(w, "DEFAULTENCODING", Some("application/vnd.syncml.dm+xml"), None);
                parm(w, "SSLCLIENTCERTSEARCHCRITERIA", Some(&criteria), None);
            });
            characteristic(w, "DMClient", |w| {
                characteristic(w, "Provider", |w| {
                    characteristic(w, PROVIDER, |w| {
                        parm(w, "EntDeviceName", Some(device_id), Some("string"));
                        characteristic(w, "Poll", |w| {
                            // Sessions every 15 minutes for the first two hours, then
                            // every 8 hours; pushes (WNS) wake it between.
                            parm(w, "NumberOfFirstRetries", Some("8"), Some("integer"));
                            parm(w, "IntervalForFirstSetOfRetries", Some("15"), Some("integer"));
                            parm(w, "NumberOfSecondRetries", Some("0"), Some("integer"));
                            parm(w, "IntervalForSecondSetOfRetries", Some("0"), Some("integer"));
                            parm(w, "NumberOfRemainingScheduledRetries", Some("0"), Some("integer"));
                            parm(w, "IntervalForRemainingScheduledRetries", Some("480"), Some("integer"));
                            parm(w, "PollOnLogin", Some("true"), Some("boolean"));
                        });
                    });
                });
            });
            Ok(())
        })
        .expect("writing to memory");
    w.into_inner()
}

/// MS-MDE2's fault subcodes Drover sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subcode {
    MessageFormat,
    Authentication,
    Authorization,
    CertificateRequest,
    InvalidEnrollmentData,
    NotSupported,
    InternalServiceFault,
}

impl Subcode {
    fn name(self) -> &'static str {
        match self {
            Subcode::MessageFormat => "MessageFormat",
            Subcode::Authentication => "Authentication",
            Subcode::Authorization => "Authorization",
            Subcode::CertificateRequest => "CertificateRequest",
            Subcode::InvalidEnrollmentData => "InvalidEnrollmentData",
            Subcode::NotSupported => "NotSupported",
            Subcode::InternalServiceFault => "InternalServiceFault",
        }
    }

    /// SOAP 1.2: the sender's fault, or the receiver's.
    fn code(self) -> &'static str {
        match self {
            Subcode::InternalServiceFault => "s:Receiver",
            _ => "s:Sender",
        }
    }
}

/// A SOAP 1.2 fault with an MS-MDE2 subcode and the reason in words.
pub fn fault_reply(message_id: Option<&str>, code: Subcode, reason: &str) -> HttpResponse {
    let mut w = writer();
    envelope(&mut w, "http://www.w3.org/2005/08/addressing/soap/fault", message_id, |w| {
        w.create_element("s:Fault").write_inner_content(|w| {
            w.create_element("s:Code").write_inner_content(|w| {
                text(w, "s:Value", code.code());
                w.create_element("s:Subcode").write_inner_content(|w| {
                    w.create_element("s:Value")
                        .with_attribute(("xmlns:a", ENROLLMENT_NS))
                        .write_text_content(BytesText::new(&format!("a:{}", code.name())))?;
                    Ok(())
                })?;
                Ok(())
            })?;
            w.create_element("s:Reason").write_inner_content(|w| {
                w.create_element("s:Text")
                    .with_attribute(("xml:lang", "en-US"))
                    .write_text_content(BytesText::new(reason))?;
                Ok(())
            })?;
            Ok(())
        })?;
        Ok(())
    });
    soap(500, w.into_inner())
}

fn soap(status: u16, body: Vec<u8>) -> HttpResponse {
    HttpResponse { status, content_type: Some(SOAP_CONTENT_TYPE.into()), headers: vec![], body }
}

fn writer() -> Writer<Vec<u8>> {
    let mut w = Writer::new(Vec::with_capacity(2048));
    w.write_event(quick_xml::events::Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None))).expect("memory");
    w
}

/// `<s:Envelope>` with the WS-Addressing header (Action, RelatesTo) around `body`.
fn envelope(
    w: &mut Writer<Vec<u8>>,
    action: &str,
    relates_to: Option<&str>,
    body: impl FnOnce(&mut Writer<Vec<u8>>) -> std::io::Result<()>,
) {
    w.create_element("s:Envelope")
        .with_attributes([("xmlns:s", SOAP), ("xmlns:a", ADDRESSING)])
        .write_inner_content(|w| {
            w.create_element("s:Header").write_inner_content(|w| {
                w.create_element("a:Action")
                    .with_attribute(("s:mustUnderstand", "1"))
                    .write_text_content(BytesText::new(action))?;
                if let Some(id) = relates_to {
                    text(w, "a:RelatesTo", id);
                }
                Ok(())
            })?;
            w.create_element("s:Body").write_inner_content(body)?;
            Ok(())
        })
        .expect("writing to memory");
}

fn text(w: &mut Writer<Vec<u8>>, name: &str, value: &str) {
    w.create_element(name).write_text_content(BytesText::new(value)).expect("memory");
}

fn nil(w: &mut Writer<Vec<u8>>, name: &str) {
    w.create_element(name)
        .with_attributes([("xsi:nil", "true"), ("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance")])
        .write_empty()
        .expect("memory");
}

fn characteristic(w: &mut Writer<Vec<u8>>, kind: &str, inner: impl FnOnce(&mut Writer<Vec<u8>>)) {
    w.create_element("characteristic")
        .with_attribute(("type", kind))
        .write_inner_content(|w| -> std::io::Result<()> {
            inner(w);
            Ok(())
        })
        .expect("memory");
}

fn header(doc: &Document, ns: &str, name: &str) -> Option<String> {
    let envelope = doc.root_element();
    let header = child(envelope, SOAP, "Header")?;
    child(header, ns, name).and_then(|n| n.text()).map(|t| t.trim().to_string())
}

fn body<'a, 'i>(doc: &'a Document<'i>) -> Result<Node<'a, 'i>, (Subcode, String)> {
    let envelope = doc.root_element();
    if !envelope.has_tag_name((SOAP, "Envelope")) {
        return Err((Subcode::MessageFormat, "the request is not a SOAP 1.2 envelope".into()));
    }
    child(envelope, SOAP, "Body").ok_or((Subcode::MessageFormat, "the envelope has no <s:Body>".into()))
}

fn child<'a, 'i>(n: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name((ns, name)))
}

/// `AdditionalContext`'s items, name then trimmed value, in order (MAC and IMEI repeat).
fn context_items(doc: &Document) -> Vec<(String, String)> {
    doc.descendants()
        .filter(|n| n.has_tag_name((AUTHORIZATION, "ContextItem")))
        .filter_map(|n| {
            let name = n.attribute("Name")?.to_string();
            let value = n.children().find(|c| c.has_tag_name((AUTHORIZATION, "Value")))?.text().unwrap_or_default();
            Some((name, value.trim().to_string()))
        })
        .collect()
}

/// A certificate's thumbprint as Windows names it: SHA-1 of the DER, upper-case hex.
fn thumbprint(der: &[u8]) -> String {
    use sha1::Digest;
    sha1::Sha1::digest(der).iter().map(|b| format!("{b:02X}")).collect()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Base64 as SOAP carries it: line breaks and spaces ignored.
fn unbase64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).ok()
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
