//! Field mappings: which provider field fills which Harmony field, per object. Every change is
//! checked against the fields the provider has now (custom ones included) and counted: the
//! mapping version moves with each change, and a change sent against an older version is
//! refused rather than silently overwriting somebody else's.

use axum::extract::State;
use axum::Json;
use domain::integration::{FieldMapping, Transform};
use serde::{Deserialize, Serialize};

use super::query::Query;
use super::{Body, Target};
use crate::problem::connect_problem;
use crate::problem::Problem;
use crate::service::load_visible;
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct MappingsQuery {
    /// With it, the answer also lists the provider's fields of this object, read from the
    /// provider now (custom fields included).
    object: Option<String>,
}

/// The integration's mappings, and what each mappable object offers.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/integrations/{id}/mappings",
    tag = "mappings",
    params(
        crate::api::IntegrationPath,
        MappingsQuery
    ),
    responses(
        (status = 200, description = "The mapping `version`, each mappable object with its fields, and the provider's fields when `object` is given", body = Mappings),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_mappings(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Query(query): Query<MappingsQuery>,
) -> Result<Json<Mappings>, Problem> {
    let current = load_visible(&state, &caller, id).await?;
    let app = current
        .profile
        .as_ref()
        .and_then(|profile| domain::catalog::app(&profile.app))
        .ok_or_else(|| crate::problem::not_found(id))?;
    let objects = app
        .capabilities
        .mappings
        .iter()
        .map(|object| {
            let mapped = current.mappings.get(object.name);
            ObjectMapping {
                object: object.name,
                harmony_object: object.harmony_object,
                harmony_fields: object.harmony_fields,
                standard_fields: object.provider_fields,
                version: mapped.map(|m| m.version),
                fields: mapped.map_or_else(Vec::new, |m| m.fields.clone()),
            }
        })
        .collect();
    let mut answer = Mappings {
        version: current.mapping_version,
        objects,
        provider_fields: None,
    };
    if let Some(object) = query.object {
        let fields = state
            .services
            .connections
            .provider_fields(
                &caller.context(),
                id,
                &object,
                state.services.credentials.as_ref(),
            )
            .await
            .map_err(connect_problem)?;
        answer.provider_fields = Some(ProviderFields { object, fields });
    }
    Ok(Json(answer))
}

/// An integration's field mappings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Mappings {
    /// Counts every mapping change of the integration, across objects: give it back as
    /// `expected_version` to refuse a change made meanwhile.
    version: u32,
    objects: Vec<ObjectMapping>,
    /// With `?object=`: that object's fields as the provider lists them now, custom fields
    /// included.
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_fields: Option<ProviderFields>,
}

/// A provider object that maps onto a Harmony object, and its mapping now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ObjectMapping {
    /// The provider's object, e.g. `contacts`.
    object: &'static str,
    harmony_object: &'static str,
    /// The Harmony fields a provider field may be mapped onto.
    harmony_fields: &'static [&'static str],
    /// The provider's standard fields.
    standard_fields: &'static [&'static str],
    /// The mapping version that last changed this object; `null` while it has the default.
    version: Option<u32>,
    fields: Vec<FieldMapping>,
}

/// A provider object's fields, as the provider lists them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct ProviderFields {
    object: String,
    fields: Vec<String>,
}

/// One object's mapping, as just replaced.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Mapping {
    object: String,
    /// The integration's new mapping version.
    version: u32,
    fields: Vec<FieldMapping>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FieldBody {
    provider_field: String,
    harmony_field: String,
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "trim")]
    transform: Option<Transform>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MappingBody {
    /// The provider's object, e.g. `contacts`.
    object: String,
    fields: Vec<FieldBody>,
    /// The mapping `version` last read; when given, the change is refused (409
    /// `mapping_version`) if the mappings changed since.
    #[serde(default)]
    expected_version: Option<u32>,
}

/// Replaces one object's mapping.
#[utoipa::path(
    put,
    path = "/v1/workspaces/{ws}/integrations/{id}/mappings",
    tag = "mappings",
    params(
        crate::api::IntegrationPath
    ),
    request_body = MappingBody,
    responses(
        (status = 200, description = "The object's mapping replaced: the new `version`", body = Mapping),
        crate::problem::WriteRefusals
    ),
    security(("bearer" = []))
)]
pub(super) async fn put_mapping(
    State(state): State<AppState>,
    Target { caller, id }: Target,
    Body(body): Body<MappingBody>,
) -> Result<Json<Mapping>, Problem> {
    let fields: Vec<FieldMapping> = body
        .fields
        .into_iter()
        .map(|field| FieldMapping {
            provider_field: field.provider_field,
            harmony_field: field.harmony_field,
            transform: field.transform,
        })
        .collect();
    let version = state
        .services
        .connections
        .change_mapping(
            &caller.context(),
            id,
            &body.object,
            fields.clone(),
            body.expected_version,
            state.services.credentials.as_ref(),
        )
        .await
        .map_err(connect_problem)?;
    Ok(Json(Mapping {
        object: body.object,
        version,
        fields,
    }))
}
