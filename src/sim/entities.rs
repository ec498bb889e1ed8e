//! The entities the simulator serves (`/api/eshop`, orders, products), shaped like Shoptet's
//! OpenAPI schema: every property the schema names is present, with a plausible value or `null`
//! where the schema allows it, so typed SDK clients can build their objects.
//! `tests/fixtures/shoptet-schema.json` (derived from the OpenAPI file) is what `tests/sim_schema.rs`
//! holds these to.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

/// The `data` of `GET /api/eshop`. Its OAuth server (ident `oauth`) lives on the simulator's
/// host (SPEC B8), so the URL is built from the simulator's `base_url`.
pub(crate) fn eshop(id: u64, base_url: &str, contact_email: &str) -> Value {
    let url = format!("https://{id}.myshoptet.com/");
    let method = |guid: &str, name: &str, order: u32| json!({"guid": guid, "name": name, "order": order, "visible": true});
    let payments = json!({
        "defaultPayment": "b57f91bb-e920-11e0-baa3-7dc668b75ca8",
        "methods": [method("b57f91bb-e920-11e0-baa3-7dc668b75ca8", "Cash on delivery", 1),
                    method("1b02cb8e-d7b5-11e0-9a5c-feab5ed617ed", "Bank transfer", 2)],
    });
    let shippings = json!({
        "defaultShipping": "c5012051-d7ca-11e0-9a5c-feab5ed617ed",
        "methods": [method("c5012051-d7ca-11e0-9a5c-feab5ed617ed", "Czech Post - in the post office", 1)],
    });
    json!({
        "contactInformation": {
            "eshopId": id,
            "eshopName": format!("Simulated e-shop {id}"),
            "eshopCategory": null,
            "url": url,
            "eshopTitle": format!("Simulated e-shop {id}"),
            "eshopSubtitle": null,
            "contactPerson": format!("Owner {id}"),
            "email": contact_email,
            "phone": "+420000000000",
            "mobilePhone": null,
            "skypeAccount": null,
            "contactPhotoUrl": null,
        },
        "billingInformation": {
            "billingName": format!("Owner {id}"),
            "company": {"companyId": "12345678", "vatId": "CZ12345678", "taxId": null},
            "address": {"streetAddress": "Example street 1", "city": "Praha", "zip": "110 00"},
            "country": {"countryCode": "CZ", "countryName": "Czech Republic"},
            "registration": null,
            "evNumber": null,
            "phone": "+420000000000",
            "email": contact_email,
            "billingEmail": null,
        },
        "settings": {
            "vatPayer": true,
            "cashDeskOnly": false,
            "trackStockClaims": false,
            "maxProductAmount": 500,
            "maxEmailAmount": 1000,
            "defaultPricelist": {"id": 1, "name": "Default price list"},
            "eshopLanguage": "cs",
            "timezone": "Europe/Prague",
            "dateFormat": "j.n.Y",
            "timeFormat": "H:i",
            "internals": "cs",
            "exchangeRateFlip": false,
            "negativeStockAmount": "allowed",
            "oss": false,
            "stockControlDisabled": false,
            "wholesaleSplitActive": false,
        },
        "currencies": [{
            "code": "CZK",
            "title": "Czech crown",
            "isDefault": true,
            "isDefaultAdmin": true,
            "isDefaultDocuments": true,
            "isVisible": true,
            "exchangeRate": "1.00000000",
            "priority": 1,
            "display": {"text": "Kč", "location": "right", "decimalsSeparator": ",",
                        "thousandsSeparator": " "},
            "priceDecimalPlaces": 2,
            "documentPriceDecimalPlaces": 2,
            "rounding": "math",
            "minimalOrderValue": null,
            "bankAccount": {"accountNumber": "19-2000145399/0800",
                            "iban": "CZ6508000000192000145399", "bic": "GIBACZPX",
                            "ownerName": format!("Owner {id}")},
        }],
        "taxClasses": [
            {"title": "Standard VAT rate", "isDefault": true,
             "rates": [{"zone": "Default Zone", "vatRate": "21.00"}]},
            {"title": "Reduced VAT rate", "isDefault": false,
             "rates": [{"zone": "Default Zone", "vatRate": "12.00"}]},
        ],
        "activeModules": [{"name": "abandonedCart", "title": "Abandoned Cart"}],
        "urls": [
            {"ident": "oauth", "url": format!("{base_url}/eshops/{id}/action/OAuthServer/")},
            {"ident": "eshop", "url": url},
            {"ident": "admin-orders-list", "url": format!("{url}admin/prehled-objednavek")},
        ],
        "socialNetworks": {"facebookUrl": null, "facebookText": null, "twitterAccount": null,
                           "instagramAccount": null},
        "orderAdditionalFields": [{"index": 1, "label": "Note for the courier"}],
        "orderStatuses": {
            "defaultStatus": -1,
            "statuses": [
                {"id": -1, "order": 1, "name": "New", "markAsPaid": false},
                {"id": -2, "order": 2, "name": "Processing", "markAsPaid": false},
                {"id": -3, "order": 3, "name": "Shipped", "markAsPaid": true},
                {"id": -4, "order": 4, "name": "Cancelled", "markAsPaid": false},
            ],
        },
        "paymentMethods": {"retail": payments, "wholesale": payments, "wholesaleActive": false},
        "shippingMethods": {"retail": shippings, "wholesale": shippings, "wholesaleActive": false},
        "imageCuts": [{
            "name": "big", "width": 1024, "height": 768,
            "urlPath": format!("{url}user/shop/big/"),
            "cdnPath": format!("https://cdn.myshoptet.com/usr/{id}.myshoptet.com/user/shop/big/"),
        }],
        "languages": [{"code": "cs", "currencyCode": "CZK", "dateFormat": "j.n.Y",
                       "timeFormat": "H:i", "isVisible": true, "isDefault": true, "priority": 1}],
        "trial": false,
        "countries": [{"countryCode": "CZ", "countryName": "Czech Republic",
                       "companyIdPattern": "^\\d{8}$", "companyIdExample": "28935675",
                       "zipCodePattern": "^[1-7]\\d{2}\\s*\\d{2}$"}],
        "cashDesk": {"defaultOrderStatusId": null},
    })
}

fn money(without_vat: u64) -> (String, String, String) {
    let with_vat = without_vat * 121 / 100;
    (
        format!("{with_vat}.00"),
        format!("{without_vat}.00"),
        format!("{}.00", with_vat - without_vat),
    )
}

fn item_price(without_vat: u64) -> Value {
    let (with, without, vat) = money(without_vat);
    json!({"withVat": with, "withoutVat": without, "vat": vat, "vatRate": "21.00"})
}

/// One order item of the detail: `product` ones carry a product's data, `shipping` and
/// `billing` ones mostly `null`s, as in Shoptet's answers.
fn order_item(item_id: u64, kind: &str, name: &str, without_vat: u64, seq: u64) -> Value {
    let product = kind == "product";
    let when = |v: Value| if product { v } else { Value::Null };
    json!({
        "itemId": item_id,
        "productGuid": when(json!(product_guid(1 + seq % 30))),
        "code": when(json!(format!("P{:04}", 1 + seq % 30))),
        "ean": null,
        "itemType": kind,
        "productType": when(json!("product")),
        "name": name,
        "variantName": null,
        "brand": when(json!("Simulated brand")),
        "remark": null,
        "weight": if product { "0.500" } else { "0.000" },
        "additionalField": null,
        "amount": "1.000",
        "amountUnit": when(json!("ks")),
        "amountCompleted": "0.000",
        "priceRatio": "1.0000",
        "status": {"id": -1, "name": "New"},
        "itemPrice": item_price(without_vat),
        "unitPrice": item_price(without_vat),
        "displayPrices": [item_price(without_vat)],
        "purchasePrice": null,
        "itemPriceVatBreakdown": null,
        "recyclingFee": null,
        "consumptionTax": null,
        "mainImage": when(json!({
            "name": "100.jpg", "seoName": "100_product.jpg", "cdnName": "100_product.jpg",
            "priority": 1, "description": null, "changeTime": null, "signedCdnNames": null,
        })),
        "stockLocation": null,
        "supplierName": null,
        "warrantyDescription": null,
        "surchargeParameters": [],
        "surchargeParametersTexts": [],
        "specificSurchargeParameters": [],
        "productFlags": [],
    })
}

fn product_guid(i: u64) -> String {
    format!("00000000-0000-4000-9000-{i:012}")
}

/// A new order (the detail of `GET /api/orders/{code}`) and its code.
pub(crate) fn order(eshop_id: u64, seq: u64, created: &str) -> (String, Value) {
    let code = format!("{}{:06}", 2024, seq);
    let goods = 100 + (seq * 37) % 900;
    let shipping_price = 100;
    let (with_vat, without_vat, vat) = money(goods + shipping_price);
    let name = format!("Customer {seq}");
    let payment =
        json!({"guid": "b57f91bb-e920-11e0-baa3-7dc668b75ca8", "name": "Cash on delivery"});
    let shipping = json!({"guid": "c5012051-d7ca-11e0-9a5c-feab5ed617ed", "name": "Czech Post - in the post office"});
    let address = json!({
        "company": null, "fullName": name, "street": "Example street", "houseNumber": format!("{seq}"),
        "city": "Praha", "district": null, "additional": null, "zip": "110 00", "countryCode": "CZ",
        "regionName": null, "regionShortcut": null,
    });
    let mut billing = address.clone();
    if let Some(b) = billing.as_object_mut() {
        for k in ["companyId", "vatId", "vatIdValidationStatus", "taxId"] {
            b.insert(k.into(), Value::Null);
        }
    }
    let v = json!({
        "code": code,
        "guid": format!("{:08x}-0000-4000-8000-{:012x}", eshop_id, seq),
        "externalCode": null,
        "creationTime": created,
        "changeTime": null,
        "email": format!("customer{seq}@example.com"),
        "phone": null,
        "birthDate": null,
        "clientIPAddress": null,
        "customerGuid": null,
        "cashDeskOrder": false,
        "stockId": 1,
        "addressesEqual": true,
        "vatPayer": true,
        "vatMode": "Normal",
        "billingMethod": null,
        "paymentMethod": payment,
        "shipping": shipping,
        "shippingDetails": null,
        "adminUrl": format!("https://{eshop_id}.myshoptet.com/admin/objednavky-detail/?code={code}"),
        "status": {"id": -1, "name": "New"},
        "source": {"id": -1, "name": "E-Shop"},
        "salesChannelGuid": null,
        "price": {
            "vat": vat, "toPay": with_vat, "currencyCode": "CZK", "withoutVat": without_vat,
            "withVat": with_vat, "exchangeRate": "1.00000000", "invoicingExchangeRate": "1.00000000",
            "partialPaymentAmount": null, "partialPaymentType": "none",
        },
        "paid": false,
        "billingAddress": billing,
        "deliveryAddress": address,
        "onlinePaymentLink": null,
        "language": "cs",
        "referer": null,
        "paymentMethods": [{"paymentMethod": payment, "itemId": seq * 10 + 3}],
        "shippings": [{"shipping": shipping, "itemId": seq * 10 + 2}],
        "items": [
            order_item(seq * 10 + 1, "product", &format!("Product {}", 1 + seq % 30), goods, seq),
            order_item(seq * 10 + 2, "shipping", "Czech Post - in the post office", shipping_price, seq),
        ],
        "notes": {"customerRemark": null, "eshopRemark": null, "trackingNumber": null,
                  "trackingUrl": null, "additionalFields": []},
        "preAuthorization": {"hasPendingPreAuthorization": false, "preAuthorizationAmount": "0.00"},
        "completion": [],
        "paymentTransactions": [],
    });
    (code, v)
}

/// Properties of an order list item (`GET /api/orders`), in Shoptet's order.
const LIST_ITEM: [&str; 20] = [
    "code",
    "guid",
    "creationTime",
    "changeTime",
    "fullName",
    "company",
    "email",
    "phone",
    "remark",
    "customerGuid",
    "cashDeskOrder",
    "adminUrl",
    "status",
    "source",
    "shipping",
    "paymentMethod",
    "price",
    "paid",
    "salesChannelGuid",
    "preAuthorization",
];

/// The list item of an order: a projection of its detail. `fullName`, `company` and `remark`
/// come from the billing address and the customer's remark unless a write set them directly.
pub(crate) fn order_list_item(detail: &Value) -> Value {
    let mut out = Map::new();
    for k in LIST_ITEM {
        let v = detail.get(k).cloned().unwrap_or_else(|| {
            let derived = match k {
                "fullName" => detail.pointer("/billingAddress/fullName"),
                "company" => detail.pointer("/billingAddress/company"),
                "remark" => detail.pointer("/notes/customerRemark"),
                _ => None,
            };
            derived.cloned().unwrap_or(Value::Null)
        });
        out.insert(k.to_owned(), v);
    }
    Value::Object(out)
}

/// The catalogue every e-shop shares: 30 products, as `GET /api/products` lists them.
pub(crate) fn products() -> &'static [Value] {
    static P: OnceLock<Vec<Value>> = OnceLock::new();
    P.get_or_init(|| {
        (1..=30u64)
            .map(|i| {
                json!({
                    "guid": product_guid(i),
                    "type": "product",
                    "name": format!("Product {i}"),
                    "visibility": "visible",
                    "url": format!("https://example.myshoptet.com/product-{i}/"),
                    "creationTime": "2024-01-01T10:00:00+0000",
                    "changeTime": null,
                    "defaultCategory": {"guid": "00000000-0000-4000-a000-000000000001",
                                        "name": "Everything", "visible": true},
                    "brand": if i % 3 == 0 { Value::Null } else { json!({"code": "sim", "name": "Simulated brand"}) },
                    "supplier": null,
                    "voteAverageScore": null,
                    "voteCount": 0,
                    "preauthorizationRequired": false,
                    "mainImage": {
                        "name": format!("{i}.jpg"), "seoName": format!("{i}_product-{i}.jpg"),
                        "cdnName": format!("{i}_product-{i}.jpg"), "priority": 1,
                        "description": null, "changeTime": null, "signedCdnNames": null,
                    },
                })
            })
            .collect()
    })
}
