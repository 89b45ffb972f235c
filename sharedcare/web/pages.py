"""Routes of the clinician's pages (find a patient, patient view, care plans, access log)."""

from __future__ import annotations

from starlette.routing import Route


def routes(sc) -> list:
    from . import accesslog, admin, careplans, patient

    return [
        Route("/patients", patient.find_patient, methods=["GET", "POST"]),
        Route("/patients/{patient_id}", patient.patient_view),
        Route("/patients/{patient_id}/break-glass", patient.break_glass, methods=["POST"]),
        Route("/patients/{patient_id}/declare", patient.declare, methods=["POST"]),
        Route("/patients/{patient_id}/open/{client_id}", patient.open_app, methods=["POST"]),
        Route("/patients/{patient_id}/care-plans/new", careplans.new_plan,
              methods=["GET", "POST"]),
        Route("/care-plans/{plan_id}", careplans.show_plan),
        Route("/care-plans/{plan_id}/edit", careplans.edit_plan, methods=["GET", "POST"]),
        Route("/care-plans/{plan_id}/history", careplans.plan_history),
        Route("/my-record/access-log", accesslog.my_access_log),
        *admin.routes(sc),
    ]
